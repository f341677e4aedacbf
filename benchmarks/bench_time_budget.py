"""EfficientNetB0 (32x32x3, weights=None, 10 classes) through `deploykit optimize --time-budget 10`, as a user runs it.

The issue's target (#21): exits 0 within 11 minutes on 2 cores, ships ``model.onnx`` and an int8 artifact within the
accuracy budget, and is never silent for more than 60 s. The model is built and trained in a plain Keras 3 process
(``keras.applications.EfficientNetB0(weights=None)``, ``model.save``), on the Fashion sample padded to 32x32 and
repeated over 3 channels (0-255 pixels: EfficientNet brings its own rescaling); then the CLI runs in its own process
with stdout and stderr read line by line, each line stamped on arrival. Measured side by side: exit code, wall and
CPU seconds (the CLI and its children), the plan line, the longest silence (between two lines, and from the start
to the first), what shipped and what was rejected (``report.json``, with the rule the tests hold:
``tests.helpers.ships_by_budget``), and the machine's load (``os.getloadavg``) before and after.

Writes benchmarks/results/time_budget.json and time_budget.md. Run from the repository root (about 15 minutes):

    python benchmarks/bench_time_budget.py [--budget 10] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
from common import FASHION, ROOT, write_results  # puts the repository on sys.path

#: Built and trained in a plain Keras 3 process: argv = data (.npz), epochs, out path.
TRAIN = textwrap.dedent("""
    import sys, numpy as np, keras
    data, epochs, batch, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    keras.utils.set_random_seed(0)
    z = np.load(data)
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(z["x"], z["y"], epochs=epochs, batch_size=batch, validation_split=0.1, verbose=0)
    model.save(out)
""")


def fashion32() -> dict:
    """The Fashion sample as 32x32x3 images of 0-255 pixels (padded by 2, the channel repeated)."""
    raw = np.load(FASHION)
    x = np.pad(raw["x"].astype("float32"), ((0, 0), (2, 2), (2, 2)))
    return {"x": np.repeat(x[..., None], 3, axis=-1), "y": raw["y"].astype("int64")}


def _read(stream, stamps: list, start: float) -> None:
    for line in iter(stream.readline, ""):
        stamps.append((time.perf_counter() - start, line.rstrip("\n")))


def run_cli(model: Path, data: Path, out: Path, budget: float, timeout: float) -> dict:
    """The CLI in its own process, every stdout / stderr line stamped on arrival."""
    command = [sys.executable, "-m", "deploykit.cli.main", "optimize", str(model), "--data", str(data)]
    command += ["--out", str(out), "--time-budget", f"{budget:g}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start, stamps = time.perf_counter(), []
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reader = threading.Thread(target=_read, args=(proc.stdout, stamps, start), daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = "timeout"
    reader.join(5)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    times = [0.0, *[t for t, _ in stamps], wall]
    gaps = [(b - a, i) for i, (a, b) in enumerate(zip(times, times[1:]))]
    silence, at = max(gaps)
    after_line = stamps[at - 1][1] if at > 0 else "(start)"
    command_line = "deploykit optimize MODEL --data DATA --out OUT --time-budget " + f"{budget:g}"
    return {
        "command": command_line,
        "exit": code,
        "wall": wall,
        "cpu": cpu,
        "lines": len(stamps),
        "longest_line": max((len(line) for _, line in stamps), default=0),
        "silence": silence,
        "silence_after": after_line[:160],
        "plan": next((line.strip() for _, line in stamps if "plan for " in line or "plan (no" in line), None),
        "log": [f"{t:7.1f} {line}"[:240] for t, line in stamps],
    }


def shipped(out: Path) -> dict:
    """What report.json says shipped and was rejected (with its reason), and whether each shipped artifact follows
    the budget rule the tests hold."""
    from tests.helpers import ships_by_budget

    path = out / "report.json"
    if not path.exists():
        return {"shipped": [], "rejected": [], "rule_holds": None, "int8": []}
    report = json.loads(path.read_text())
    arts = [r for r in report["artifacts"] if r["file"] != "original.keras"]
    ships = [r for r in arts if r["verdict"] != "rejected"]
    original = next((r for r in report["artifacts"] if r["file"] == "original.keras"), {})
    measured = [r for r in ships if r.get("accuracy_change") is not None]
    return {
        "shipped": [r["file"] for r in ships],
        "rejected": [
            f"{r['file']}: {' '.join(str(r.get('checks', '')).split())[:160]}" for r in arts if r not in ships
        ],
        "rule_holds": all(ships_by_budget(r, report) for r in measured),
        "int8": [r["file"] for r in ships if "int8" in r["file"]],
        "original_accuracy": original.get("accuracy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=10.0, help="--time-budget in minutes")
    # enough steps for BatchNorm's moving statistics (momentum 0.99) to leave their initial values: with fewer, the
    # network predicts one class in inference mode and every artifact "agrees" with it
    parser.add_argument("--epochs", type=int, default=4, help="training epochs of the user's model")
    parser.add_argument("--batch", type=int, default=32, help="training batch size of the user's model")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    if not FASHION.exists():
        sys.exit(f"needs {FASHION} (../shared beside the project)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, model = folder / "fashion32.npz", folder / "efficientnet_b0.keras"
        np.savez(data, **fashion32())
        started = time.perf_counter()
        train = [sys.executable, "-c", TRAIN, str(data), str(args.epochs), str(args.batch), str(model)]
        subprocess.run(train, check=True)
        print(f"trained in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        load_before = os.getloadavg()
        row = run_cli(model, data, folder / "out", args.budget, args.timeout)
        row.update(shipped(folder / "out"), load_before=load_before, load_after=os.getloadavg())
        row.update(train_epochs=args.epochs, train_batch=args.batch)
    write(row, args.budget)


def _pct(value) -> str:
    return "?" if value is None else f"{100 * value:.1f}%"


def write(row: dict, budget: float) -> None:
    ok = row["exit"] == 0 and row["wall"] <= 1.1 * 60 * budget and row["silence"] <= 60
    md = [
        f"# EfficientNetB0 (32x32x3, weights=None, 10 classes) with `--time-budget {budget:g}`",
        "",
        f"Command: `{row['command']}` (the model trained here in plain Keras 3 for {row.get('train_epochs', 2)} "
        f"epochs, "
        f"batch {row.get('train_batch', 64)}, on the Fashion sample padded to 32x32; its test accuracy: "
        f"{_pct(row.get('original_accuracy'))}, chance 10%).",
        "",
        "| exit | wall | CPU s | longest silence | longest line | shipped | int8 shipped | budget rule | load 1-min |",
        "|---:|---:|---:|---:|---:|---|---|---|---|",
        (
            f"| {row['exit']} | {row['wall'] / 60:.1f} min (loaded) | {row['cpu']:.0f} | {row['silence']:.0f} s | "
            f"{row['longest_line']} chars | {', '.join(map(str, row['shipped'])) or '-'} | "
            f"{', '.join(map(str, row['int8'])) or 'none'} | {row['rule_holds']} | "
            f"{row['load_before'][0]:.1f} before, {row['load_after'][0]:.1f} after |"
        ),
        "",
        f"Plan line: `{row['plan']}`",
        "",
        f"Longest silence after: `{row['silence_after']}`",
        "",
        f"Target (exit 0, within {1.1 * budget:.0f} min, silent <= 60 s): {'met' if ok else 'MISSED'}.",
        "",
        "Rejected: " + ("; ".join(row["rejected"]) or "none") + ".",
    ]
    write_results("time_budget", row, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
