"""probers/tls package."""
