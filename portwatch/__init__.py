"""portwatch package."""
