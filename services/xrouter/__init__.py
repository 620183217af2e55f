"""xrouter: a learned, cost-aware LLM router served as gRPC microservices."""
