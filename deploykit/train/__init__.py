"""train (under construction)."""
