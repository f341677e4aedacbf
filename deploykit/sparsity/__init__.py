"""sparsity (under construction)."""
