"""What the benchmark scripts share: where things are, and how results are written.

Each script runs from a checkout (``python benchmarks/bench_fold.py``), so this
folder is on ``sys.path``; importing this module puts the repository root there too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: The real Fashion-MNIST sample beside the project (absent on a user's machine: scripts skip it).
FASHION = ROOT.parent / "shared" / "data" / "fashion_mnist_3615.npz"
RESULTS = ROOT / "benchmarks" / "results"


def last_rows(name: str, folder: Path = RESULTS) -> dict[str, dict]:
    """The rows of an earlier ``<name>.json`` by model (none before the first run): a run of some models keeps the
    others' rows."""
    path = folder / f"{name}.json"
    return {r["model"]: r for r in json.loads(path.read_text())["rows"]} if path.exists() else {}


def write_results(name: str, data: dict, markdown: str, folder: Path = RESULTS, quiet: bool = False) -> None:
    """Write ``<name>.json`` and ``<name>.md`` atomically into ``folder`` and print the markdown (unless ``quiet``)."""
    from deploykit.atomic import write_text

    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / f"{name}.json", json.dumps(data, indent=2, default=str) + "\n")
    write_text(folder / f"{name}.md", markdown if markdown.endswith("\n") else markdown + "\n")
    if not quiet:
        print(markdown)


def accuracy_change(correct: dict, label: str, reference: str = "float32") -> dict:
    """One file's test figures against the reference file's on the same rows: ``file``, ``accuracy`` and ``delta``
    (the change with its 95% paired interval, deploykit.stats.accuracy_change_interval). ``correct``: {file label:
    booleans per row}."""
    from deploykit.stats import accuracy_change_interval

    change = accuracy_change_interval(correct[reference], correct[label])
    return {
        "file": label,
        "accuracy": float(correct[label].mean()),
        "delta": [change.estimate, change.low, change.high],
    }
