"""probers/service package."""
