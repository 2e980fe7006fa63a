"""probers/discovery package."""
