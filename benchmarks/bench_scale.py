"""How `deploykit optimize` grows: wall and CPU time of each step against model size and against data size.

Side by side in one run:
- model size: the digits MLP (shipped), the book's MLP (``../shared/models``), the keras.io MNIST convnet,
  MobileNetV2 (96x96, alpha 0.35), EfficientNetB0 (32x32) and ResNet50 (32x32), keras.applications with
  weights=None, each trained one epoch on the Fashion sample (resized / padded to its input, channels repeated);
- data size: the book's MLP on the Fashion sample replicated 1x, 4x and 16x.
Every run is ``optimize`` with one pruning try (``sparsity=0.8``, 2 epochs: the same work per model), the
default exports and the MC model (10 samples), in its own process with a timeout (a model that cannot finish
on this machine is a row saying so). Each step's wall and CPU seconds come from the run's own progress lines.
For each step, the exponent ``b`` of ``seconds ~ size^b`` (least squares in log-log) against parameters and
against rows: a step whose work is linear in its input should show ``b`` near 1 or below.

Writes benchmarks/results/scale.json and scale.md. Run from the repository root (heavy: an hour or more on
two cores; ``--models`` trims the list):

    python benchmarks/bench_scale.py --models digits,book,convnet,mobilenet,efficientnet,resnet --timeout 1800
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import FASHION, ROOT, write_results  # puts the repository on sys.path

BOOK = ROOT.parent / "shared" / "models" / "book_fashion_bn_dropout.keras"
DIGITS = ROOT / "models" / "digits_default.keras"
MODELS = ("digits", "book", "convnet", "mobilenet", "efficientnet", "resnet")
#: What a user with a real-size model on 2 cores runs: ``time_budget=`` minutes, so the run plans within bounds (the
#: steps after the plan then take the budget's shares, not the unbounded work: stated in the table).
TIME_BUDGET = {"mobilenet": 10.0, "efficientnet": 10.0, "resnet": 10.0}
REPLICAS = (1, 4, 16)
#: What a user who trusts the file sets, as the refusal says: ResNet50 saved with its Adam state after training is
#: 270.5 MiB, over deploykit's default 256 MiB model limit (deploykit/limits.py).
LIMITS = {"DEPLOYKIT_MAX_MODEL_BYTES": str(1024 * 2**20)}

#: Runs inside the child: optimize with a progress callback that stamps (wall, CPU) at each step line.
CHILD = r"""
import json, sys, time
from deploykit.pipeline import optimize
marks = []
start = (time.perf_counter(), time.process_time())
partial = open(sys.argv[4] + ".partial", "w")  # every mark as it comes: a run cut short keeps its finished steps
def progress(message):
    marks.append((message, time.perf_counter(), time.process_time()))
    print(message[:200], file=sys.stderr, flush=True)
    partial.write(json.dumps(marks[-1]) + "\n")
    partial.flush()
from deploykit.io.models import load_model
partial.write(json.dumps({"start": start, "params": int(load_model(sys.argv[1]).count_params())}) + "\n")
budget = None if sys.argv[5] == "none" else float(sys.argv[5])
result = optimize(sys.argv[1], sys.argv[2], out_dir=sys.argv[3], sparsity=0.8, epochs=2, samples=10, mc_seed=0,
                  time_budget=budget, progress=progress)
end = (time.perf_counter(), time.process_time())
json.dump({"marks": marks, "start": start, "end": end, "params": result.report["original"]["params"],
           "shipped": [r.file for r in result.shipped], "steps": [[s.step, s.status.value] for s in result.steps]},
          open(sys.argv[4], "w"))
"""


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fashion(shape: tuple[int, ...], replicas: int = 1) -> dict:
    """The Fashion sample at ``shape`` (28x28 flat rows, padded or resized images, channels repeated)."""
    raw = np.load(FASHION)
    x, y = raw["x"].astype("float32") / 255.0, raw["y"].astype("int64")
    if len(shape) == 3:
        side, channels = shape[0], shape[2]
        if side != 28:
            import tensorflow as tf

            x = (
                tf.image.resize(x[..., None], (side, side)).numpy()[..., 0]
                if side > 32
                else np.pad(x, ((0, 0), ((side - 28) // 2,) * 2, ((side - 28) // 2,) * 2))
            )
        x = np.repeat(x[..., None], channels, axis=-1)
    return {"x": np.concatenate([x] * replicas), "y": np.concatenate([y] * replicas)}


def build(name: str):
    """(model file, its input shape): keras.applications (weights=None) and the keras.io convnet, Keras 3."""
    import keras

    if name == "convnet":  # keras.io "Simple MNIST convnet"
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Conv2D(32, 3, activation="relu"),
                keras.layers.MaxPooling2D(2),
                keras.layers.Conv2D(64, 3, activation="relu"),
                keras.layers.MaxPooling2D(2),
                keras.layers.Flatten(),
                keras.layers.Dropout(0.5),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
    elif name == "mobilenet":
        model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)
    elif name == "efficientnet":
        model = keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=10)
    else:
        model = keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10)
    return model


def prepare(name: str, folder: Path) -> tuple[Path, Path]:
    """(model file, data file) of one benchmark model, trained one epoch where it is built here."""
    if name == "digits":
        return DIGITS, Path("digits")
    if name == "book":
        data = folder / "fashion_1x.npz"
        np.savez(data, **fashion((28, 28)))
        return BOOK, data
    model = build(name)
    shape = tuple(model.input_shape[1:])
    data = folder / f"{name}.npz"
    arrays = fashion(shape)
    np.savez(data, **arrays)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(arrays["x"][:3000], arrays["y"][:3000], epochs=1, batch_size=64, verbose=0)
    path = folder / f"{name}.keras"
    model.save(path)
    return path, data


def run(model: Path, data: Path, folder: Path, timeout: float, budget: float | None = None) -> dict:
    """One optimize in a child process (within ``budget`` minutes when given): its steps' wall and CPU seconds, or
    how it failed."""
    out, marks = folder / "out", folder / "marks.json"
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(model), str(data), str(out), str(marks), str(budget or "none")],
            cwd=ROOT,
            env={**os.environ, **LIMITS},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _cut_short(marks.with_name(marks.name + ".partial"), timeout, time.perf_counter() - start)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200], "wall": time.perf_counter() - start}
    got = json.loads(marks.read_text())
    return {
        "steps": steps(got),
        "params": got["params"],
        "shipped": got["shipped"],
        "skipped": [name for name, status in got["steps"] if status == "skipped"],
        "wall": got["end"][0] - got["start"][0],
        "cpu": got["end"][1] - got["start"][1],
    }


def _cut_short(partial: Path, timeout: float, wall: float) -> dict:
    """A run stopped at ``timeout``: the steps it finished (from the marks it wrote as it went) and where it was."""
    lines = [json.loads(line) for line in partial.read_text().splitlines()] if partial.exists() else []
    head = next((x for x in lines if isinstance(x, dict)), None)
    marks = [x for x in lines if isinstance(x, list)]
    bounds = [m for m, _, _ in marks if m.startswith(("step ", "writing the report"))]
    if head is None or not bounds:
        last = f" before the first step (last line: {marks[-1][0].strip()[:80]})" if marks else ""
        return {"error": f"timed out after {timeout:.0f} s{last}", "wall": wall}
    return {
        "steps": steps({"marks": marks, "start": head["start"], "end": None}),
        "params": head["params"],
        "shipped": [],
        "wall": wall,
        "cpu": marks[-1][2] - head["start"][1],
        "error": f"timed out after {timeout:.0f} s in {bounds[-1].split(': ', 1)[-1]}",
    }


def steps(got: dict) -> dict[str, dict[str, float]]:
    """Per step (and the preparation before the first: loading, measuring, planning): wall and CPU seconds; a run
    cut short (``end`` None) has the steps it finished."""
    marks = got["marks"]
    bounds = [(m, w, c) for m, w, c in marks if m.startswith(("step ", "writing the report"))]
    out = {"prepare": {"wall": bounds[0][1] - got["start"][0], "cpu": bounds[0][2] - got["start"][1]}}
    ends = [*bounds[1:], ("end", *got["end"])] if got["end"] is not None else bounds[1:]
    for (m, w, c), (_, w2, c2) in zip(bounds, ends):
        name = m.split(": ", 1)[1] if m.startswith("step ") else "report"
        out[name] = {"wall": w2 - w, "cpu": c2 - c}
    return out


def skipped(row: dict) -> set[str]:
    """The steps a run skipped (switched off, or left out by its time budget's plan): no work, no growth. Rows
    written before the statuses were kept: a budgeted run's steps under 2 s (a skipped search still plans)."""
    if "skipped" in row:  # the run's step names ("sparsity (prune)"), the progress lines' first words ("sparsity")
        return {n for n in row.get("steps", {}) if any(k == n or k.startswith(n + " (") for k in row["skipped"])}
    if not row.get("time_budget"):
        return set()
    return {n for n, t in row.get("steps", {}).items() if n != "prepare" and t["wall"] < 2.0}


def _ran(row: dict, name: str) -> bool:
    return "steps" in row and name in row["steps"] and name not in skipped(row)


def _cell(row: dict, name: str) -> str:
    if name not in row["steps"]:
        return ""
    if name in skipped(row):
        return "skipped"
    return f"{row['steps'][name]['wall']:.1f} / {row['steps'][name]['cpu']:.1f}"


def exponent(sizes: list[float], seconds: list[float]) -> float | None:
    """The slope of log(seconds) on log(size) (None with fewer than two distinct sizes)."""
    pairs = [(s, t) for s, t in zip(sizes, seconds) if s and t and t > 0]
    if len({s for s, _ in pairs}) < 2:
        return None
    return float(np.polyfit(np.log([s for s, _ in pairs]), np.log([t for _, t in pairs]), 1)[0])


def table(rows: list[dict], key: str, label: str) -> list[str]:
    names = list(dict.fromkeys(n for r in rows if "steps" in r for n in r["steps"]))
    lines = [f"| {label} | " + " | ".join(names) + " | total | result |", "|---|" + "---:|" * (len(names) + 1) + "---|"]
    for r in rows:
        if "steps" not in r:
            label = r.get(key) or r.get("model", "?")
            lines.append(f"| {label} | " + " | ".join("" for _ in names) + f" | {r['wall']:.0f} | {r['error']} |")
            continue
        cells = [_cell(r, n) for n in names]
        result = f"{r['model']}: {r['error']}" if r.get("error") else f"{len(r['shipped'])} shipped"
        result += f" (time_budget={r['time_budget']:g} min)" if r.get("time_budget") else ""
        lines.append(f"| {r[key]:,} | " + " | ".join(cells) + f" | {r['wall']:.0f} / {r['cpu']:.0f} | {result} |")
    for clock in ("cpu", "wall"):
        slopes = [
            exponent(
                [r[key] for r in rows if _ran(r, n)],
                [r["steps"][n][clock] for r in rows if _ran(r, n)],
            )
            for n in names
        ]
        whole = [r for r in rows if "steps" in r and not r.get("error")]  # runs cut short have no total
        total = exponent([r[key] for r in whole], [r[clock] for r in whole])
        lines.append(
            f"| exponent b ({clock.upper() if clock == 'cpu' else clock}) | "
            + " | ".join("" if b is None else f"{b:.2f}" for b in slopes)
            + f" | {'' if total is None else f'{total:.2f}'} | |"
        )
    return lines


def report(by_model: list[dict], by_rows: list[dict]) -> None:
    """Write scale.json / scale.md with what was measured so far (called after every run: a long run that is cut
    short still leaves its results)."""
    missing = [m for m in MODELS if m not in {r["model"] for r in by_model}]
    lines = [
        "# optimize: time per step against model size and data size",
        "",
        (
            "Each cell: wall / CPU seconds of one step of `optimize(model, data, sparsity=0.8, epochs=2, samples=10)`, "
            "in its own process on this machine (2 shared cores: CPU time is the steadier figure). `prepare`: loading, "
            "measuring and planning; `report`: the report and plots. The exponent b fits seconds ~ size^b. The large "
            "keras.applications models run as a user with a real-size model would, with `time_budget=` (shown in the "
            "result): their search and exports are planned within it, so their steps measure the plan's shares; a "
            "step it left out is `skipped` and out of the exponent, which then covers the models that ran it."
        ),
        "",
        "## Against model size (parameters)",
        "",
        *table(
            sorted([r for r in by_model if r.get("params")], key=lambda r: r["params"])
            + [r for r in by_model if not r.get("params")],
            "params",
            "parameters",
        ),
        "",
        "Models: "
        + ", ".join(
            f"{r['model']} ({r.get('params') or '?'} params"
            + (f", `time_budget={r['time_budget']:g}` minutes" if r.get("time_budget") else "")
            + ")"
            for r in by_model
        )
        + (". Not measured in this run (cut for time): " + ", ".join(missing) if missing else "")
        + ".",
        "",
        "## Against data size (rows of the Fashion sample, replicated; the book's MLP)",
        "",
        *table(by_rows, "rows", "rows"),
    ]
    write_results("scale", {"by_model": by_model, "by_rows": by_rows}, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--replicas", default=",".join(map(str, REPLICAS)))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per optimize run")
    parser.add_argument("--render", action="store_true", help="only write scale.md again from scale.json")
    parser.add_argument(
        "--keep", action="store_true", help="keep scale.json's rows of the models and data sizes not run this time"
    )
    args = parser.parse_args()
    if args.render:
        import json

        from common import RESULTS

        saved = json.loads((RESULTS / "scale.json").read_text())
        report(saved["by_model"], saved["by_rows"])
        return
    if not FASHION.exists() or not BOOK.exists():
        sys.exit(f"needs {FASHION} and {BOOK} (../shared beside the project)")
    names = args.models.split(",")
    replicas = [int(k) for k in args.replicas.split(",") if k]
    by_model, by_rows = _kept(names, replicas) if args.keep else ([], [])
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:  # the small models first, then the data sizes, then the large models
            if name in ("mobilenet", "efficientnet", "resnet") and replicas:
                _rows(replicas, by_model, by_rows, Path(tmp), args.timeout)
                replicas = []
            folder = Path(tmp) / name
            folder.mkdir()
            say(f"{name}: preparing")
            model, data = prepare(name, folder)
            say(f"{name}: optimize")
            budget = TIME_BUDGET.get(name)
            row = {"model": name, "time_budget": budget, **run(model, data, folder, args.timeout, budget)}
            done = row.get("error") or "{:.0f} s wall, {:.0f} s CPU".format(row["wall"], row["cpu"])
            say(f"{name}: {done}")
            by_model.append(row)
            report(by_model, by_rows)
        _rows(replicas, by_model, by_rows, Path(tmp), args.timeout)
    report(by_model, by_rows)


def _kept(names: list[str], replicas: list[int]) -> tuple[list[dict], list[dict]]:
    """scale.json's rows of the models not in ``names`` and of the data sizes not in ``replicas`` (a run of a few
    large models adds their rows to the table instead of replacing it)."""
    from common import RESULTS

    saved = RESULTS / "scale.json"
    if not saved.exists():
        return [], []
    old = json.loads(saved.read_text())
    return (
        [r for r in old["by_model"] if r["model"] not in names],
        [r for r in old["by_rows"] if r.get("replicas") not in replicas],
    )


def _rows(replicas: list[int], by_model: list[dict], by_rows: list[dict], tmp: Path, timeout: float) -> None:
    """The book's MLP on the Fashion sample replicated ``replicas`` times (the model table's book row is 1x)."""
    book = next((r for r in by_model if r["model"] == "book"), None)
    for k in replicas:
        if k == 1 and book is not None:
            by_rows.append({"rows": len(np.load(FASHION)["y"]), "replicas": 1, **book})
            continue
        folder = tmp / f"rows{k}"
        folder.mkdir()
        data = folder / "fashion.npz"
        np.savez(data, **fashion((28, 28), k))
        say(f"book MLP, Fashion x{k}: optimize")
        by_rows.append({"rows": len(np.load(data)["y"]), "replicas": k, **run(BOOK, data, folder, timeout)})
        report(by_model, by_rows)


if __name__ == "__main__":
    main()
