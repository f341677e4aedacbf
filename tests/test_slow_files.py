"""The quick loop skips importing files marked slow as a whole (tests/slow_files.py), and only under ``not slow``."""

from __future__ import annotations

from pathlib import Path

from tests.slow_files import marked_slow, skips_slow


def test_only_not_slow_skips_whole_slow_files():
    assert skips_slow("not slow") and skips_slow("  not   slow ")
    for other in (None, "", "slow", "not slow and not serve", "not slow or serve", "not slower"):
        assert not skips_slow(other), other


def test_a_file_is_whole_slow_by_its_top_level_mark_only(tmp_path):
    cases = {
        "pytestmark = pytest.mark.slow\n": True,
        "import pytest\n\npytestmark = pytest.mark.slow  # trains a model\n": True,
        "@pytest.mark.slow\ndef test_one():\n    pass\n": False,  # one test, not the file
        "    pytestmark = pytest.mark.slow\n": False,  # inside a class: that class only
        "pytestmark = pytest.mark.slower\n": False,
        "pytestmark = [pytest.mark.slow, pytest.mark.skip]\n": False,  # not recognised: collected as before
    }
    for i, (text, expected) in enumerate(cases.items()):
        path = tmp_path / f"test_{i}.py"
        path.write_text(text, encoding="utf-8")
        assert marked_slow(path) is expected, text
    assert not marked_slow(tmp_path / "missing.py")


def test_the_suite_has_whole_slow_files_to_skip():
    """The files this saves: if the pattern stopped matching the suite's own marks, nothing would be skipped."""
    tests = Path(__file__).parent
    assert sum(marked_slow(p) for p in tests.rglob("test_*.py")) >= 30
