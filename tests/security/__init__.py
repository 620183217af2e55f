"""Security tests (issue 15): authenticated tenants, admin separation, TLS."""
