"""Where the shipped model is: the default of every command that takes a model, and of the README's snippets."""

from __future__ import annotations

from pathlib import Path

#: The model card is models/README.md beside it (an editable install reads it from the checkout).
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "digits_default.keras"
