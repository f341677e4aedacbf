"""Test files the quick loop need not import: under ``-m "not slow"``, a file marked slow as a whole
(``pytestmark = pytest.mark.slow`` at its top level) has no test to select, yet collecting it costs each
pytest-xdist worker an import and pytest's assertion rewriting (about 1.5 CPU s per worker for the 45 such files).

Only the exact expression ``not slow`` skips them: any other ``-m`` could select a test of such a file by another
marker, and then every file is collected as before. Which tests run is unchanged; the summary counts fewer
"deselected".
"""

from __future__ import annotations

import re
from pathlib import Path

#: A module-level mark of the whole file (a comment may follow).
_WHOLE_FILE_SLOW = re.compile(r"^pytestmark = pytest\.mark\.slow\b", re.MULTILINE)


def skips_slow(markexpr: str | None) -> bool:
    """Whether this run's ``-m`` deselects every slow test whatever its other markers: only ``not slow``."""
    return " ".join((markexpr or "").split()) == "not slow"


def marked_slow(path: Path) -> bool:
    """Whether the test file marks all its tests slow at its top level."""
    try:
        return bool(_WHOLE_FILE_SLOW.search(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError):  # unreadable: collect it, as pytest would, and let it report
        return False
