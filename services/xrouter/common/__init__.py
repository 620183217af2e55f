"""What the four services share: settings, errors, the gRPC server frame, telemetry, metrics."""
