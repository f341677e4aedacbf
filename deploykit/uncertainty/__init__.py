"""uncertainty (under construction)."""
