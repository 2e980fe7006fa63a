"""probers package."""
