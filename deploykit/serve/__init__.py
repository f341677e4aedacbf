"""serve (under construction)."""
