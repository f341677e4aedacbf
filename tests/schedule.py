"""The costliest test files first, so that ``pytest -n 2 --dist loadfile`` ends both workers together.

With ``--dist loadfile`` a file is one unit of work and the run lasts as long as its busiest worker. pytest-xdist
hands the units out in a fixed order, by default the files with the most tests first; a file of 40 quick tests
then goes before one optimize run of 90 s, and a long file handed out last leaves the other worker idle while it
runs. Handing out the costliest first (longest-processing-time first) keeps the two workers within about one
file of each other. The costs are CPU seconds per file measured by :mod:`tests.cpu_report`
(``--cpu-report-costs tests/file_costs.json`` updates them), split into the file's quick tests and its slow ones
so the order also fits ``-m "not slow"``. A file missing from the table (a new one) is guessed from its tests
until the table is rewritten. Only the order changes: every selected test runs, in its file's own order.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

#: Per file: {"fast": CPU s of its quick tests, "slow": CPU s of its slow tests}.
COSTS = Path(__file__).with_name("file_costs.json")
#: A test missing from the table: CPU seconds guessed for a quick one and for a slow one (the means of a full run:
#: about 100 CPU s over 1,030 quick tests, 1,400 over 390 slow ones).
GUESS = {"fast": 0.1, "slow": 3.6}


def kind(item) -> str:
    """ "slow" or "fast": the half of the table an item's cost is in."""
    return "slow" if item.get_closest_marker("slow") else "fast"


def load_costs(path: Path = COSTS) -> dict[str, dict[str, float]]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no table (or a broken one): every file is guessed
        return {}


def file_costs(items, costs: dict[str, dict[str, float]]) -> dict[str, float]:
    """The expected CPU seconds of each file's selected tests: the table's half for each kind selected (a file's
    fixtures are paid once per kind, whichever tests of it run), else the guess per test."""
    kinds: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for item in items:
        kinds[item.nodeid.split("::")[0]][kind(item)] += 1
    return {
        file: sum(costs.get(file, {}).get(k, GUESS[k] * n) for k, n in counts.items()) for file, counts in kinds.items()
    }


def costliest_first(items, costs: dict[str, dict[str, float]] | None = None) -> None:
    """Reorder ``items`` in place: files by expected cost, highest first; tests within a file keep their order."""
    expected = file_costs(items, load_costs() if costs is None else costs)
    position = {file: i for i, file in enumerate(sorted(expected, key=lambda f: (-expected[f], f)))}
    items.sort(key=lambda item: position[item.nodeid.split("::")[0]])


def write_costs(tests: dict[str, float], kinds: dict[str, str], path: Path) -> None:
    """The table updated with one run's CPU seconds per test (``kinds``: nodeid -> "fast" / "slow").

    Each half this run measured (a file's quick tests, or its slow ones) replaces the table's; every other entry
    stays. So the slow halves can be measured a few files at a time (``-m slow`` on the costliest files) without
    a run of the whole suite; run every test of a half, or that half is recorded short."""
    measured: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for nodeid, seconds in tests.items():
        measured[nodeid.split("::")[0]][kinds.get(nodeid, "fast")] += seconds
    # a half no test of this run measured (say under -m "not slow") keeps the table's figure, or stays guessed
    table = load_costs(path)
    for file, halves in measured.items():
        table.setdefault(file, {}).update({k: round(v, 1) for k, v in halves.items()})
    dump(table, path)


def dump(table: dict[str, dict[str, float]], path: Path) -> None:
    """One line per file, sorted: a rewrite's diff shows which files' costs moved."""
    lines = [f"{json.dumps(f)}: {json.dumps(halves, sort_keys=True)}" for f, halves in sorted(table.items())]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
