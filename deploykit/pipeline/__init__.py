"""pipeline (under construction)."""
