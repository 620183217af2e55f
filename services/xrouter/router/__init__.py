"""The router: the episode loop, the policies, and the gRPC and OpenAI-compatible faces."""
