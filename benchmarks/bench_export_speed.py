"""Export speed of one ``deploykit optimize`` run: this checkout against a baseline revision, side by side.

What changed (``deploykit/export/conversions.py``): a model is converted once for all its variants (one tf2onnx
conversion for float32 / float16 / int8-dynamic ONNX, one traced signature and SavedModel for the TFLite variants),
and that SavedModel is saved without custom gradients (swish: EfficientNet). The baseline (``--baseline``, default
``main``) is extracted with ``git archive`` into a temporary folder and run with ``PYTHONPATH`` pointing at it; this
checkout runs the same command. The two alternate (baseline, this, baseline, this... per model), so load drifts
hit both alike.

Models: the embedded default (the shipped digits model, ``deploykit optimize`` with no model) and EfficientNetB0
(``keras.applications``, ``weights=None``, 96x96x3, 10 classes, saved as users save it with ``model.save``) on random
inputs. A short run: no structured or magnitude pruning, no MC model, formats onnx,tflite, variants float32,
float16 and the dynamic int8 of each format (``int8-dynamic`` ONNX, ``int8-weights`` TFLite), the budget wide open
for the untrained EfficientNet (its first int8 try is kept: the export path's cost, not the int8 search's).

Figures per run: CPU seconds of the ``optimize`` process (user + system, its children included), wall seconds, and
the seconds ``report.json`` gives the export steps. Ratios are baseline / this (above 1: this is faster).

Run: ``nice -n 5 timeout 3600 python benchmarks/bench_export_speed.py`` (about 40 minutes on 2 cores, loaded).
Writes ``benchmarks/results/export_speed.json`` and ``export_speed.md``. ``--calls`` times the export calls alone
instead (``export_variant`` for each of the six variants in one process per side: no validation, no latency timing,
no other step), into ``export_speed_calls.*``: the CPU seconds the change is about, without the run's
time-bounded latency measurements beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, write_results  # noqa: E402  (puts the repository on sys.path)

SHORT = ["--structured", "0", "--no-sparsity", "--no-mc", "--formats", "onnx,tflite", "--latency-repeats", "5"]
VARIANTS = "float32,float16,int8-dynamic,int8-weights"
ROWS = 300  # EfficientNet's random inputs: train / validation / test split of these
SIZE = 96


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


T0 = time.monotonic()


def efficientnet_case(folder: Path) -> list[str]:
    """EfficientNetB0 saved as a Keras 3 file, and random data for it: the optimize arguments."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(SIZE, SIZE, 3), classes=10)
    model.save(folder / "efficientnetb0.keras")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (ROWS, SIZE, SIZE, 3)).astype(np.float32)
    np.savez(folder / "random.npz", x=x, y=rng.integers(0, 10, ROWS))
    wide = ["--max-accuracy-drop", "0.99", "--max-nll-increase", "100"]  # untrained: every first try passes
    return [str(folder / "efficientnetb0.keras"), "--data", str(folder / "random.npz"), *wide]


def run(code: Path, args: list[str], out: Path) -> dict:
    """One ``deploykit optimize`` in a fresh process importing the package from ``code``; its CPU and wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "deploykit.cli.main", "optimize", *args, *SHORT]
    command += ["--quantize", VARIANTS, "--out", str(out), "--force", "-q"]  # cwd below: no checkout on sys.path
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=out.parent, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"optimize failed ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    steps = {s["step"]: s["seconds"] for s in report["steps"]}
    export = sum(v for k, v in steps.items() if k.startswith("export "))
    shipped = sorted(a["file"] for a in report["artifacts"] if a.get("verdict") == "pass")
    return {
        "cpu_s": round(cpu, 1),
        "wall_s": round(wall, 1),
        "export_steps_s": round(export, 1),
        "steps": steps,
        "shipped": shipped,
    }


#: ``--calls``: the exports alone, in a child importing the package under test (no validation, no other steps).
CALLS_CHILD = """
import json, sys, time
from deploykit import load_model
from deploykit.export import export_variant
model = load_model(sys.argv[1])
x = __import__("numpy").random.default_rng(0).standard_normal((64, *model.input_shape[1:])).astype("float32")
seconds = []
for fmt, quant in [("onnx", "float32"), ("onnx", "float16"), ("onnx", "int8-dynamic"),
                   ("tflite", "float32"), ("tflite", "float16"), ("tflite", "int8-weights")]:
    start, wall = time.process_time(), time.perf_counter()
    data = x if quant.startswith("int8") else None
    export_variant(model, fmt, quant, f"{sys.argv[2]}/{fmt}_{quant}.{fmt}", data)
    seconds.append([fmt + " " + quant, round(time.process_time() - start, 2), round(time.perf_counter() - wall, 2)])
print(json.dumps(seconds))
"""


def calls(code: Path, model: Path, out: Path) -> list:
    """CPU and wall seconds of each export call of the six variants, one model, in a fresh process."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", CALLS_CHILD, str(model), str(out)], env=env, cwd=out, capture_output=True, text=True
    )  # cwd: ``-c`` puts the working folder first on sys.path, ahead of PYTHONPATH
    if done.returncode:
        raise RuntimeError(f"export calls failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def calls_markdown(data: dict) -> str:
    lines = [
        "# Export calls alone: one conversion per model (this checkout) against the baseline",
        "",
        f"Baseline `{data['baseline']}`, this checkout `{data['this']}`. One process per model and side (they "
        "alternate), `export_variant` for each variant in turn, the int8 ones calibrated on 64 random rows; "
        "CPU s of each call (wall s, loaded). Ratio: baseline / this CPU.",
        "",
        "| model | call | baseline CPU s (wall) | this CPU s (wall) | CPU ratio |",
        "|---|---|---|---|---|",
    ]
    for name, case in data["models"].items():
        for (call, old, old_wall), (_, new, new_wall) in zip(case["baseline"], case["this"]):
            lines.append(f"| {name} | {call} | {old} ({old_wall}) | {new} ({new_wall}) | {old / new:.2f}x |")
        old, new = (sum(c[1] for c in case[side]) for side in ("baseline", "this"))
        lines.append(f"| {name} | **all six** | **{old:.1f}** | **{new:.1f}** | **{old / new:.2f}x** |")
    return "\n".join(lines)


def main_calls(args, tmp: Path, base: str, this: str, models: dict) -> None:
    data = {"baseline": base, "this": this, "models": {}}
    for name, path in models.items():
        case = {}
        for side, code in (("baseline", tmp / "baseline"), ("this", ROOT)):
            say(f"{name}: export calls, {side}")
            case[side] = calls(code, path, tmp / f"calls_{name}_{side}")
            say(f"  {sum(c[1] for c in case[side]):.1f} CPU s")
        data["models"][name] = case
        write_results("export_speed_calls", data, calls_markdown(data), **({"folder": args.out} if args.out else {}))


def same_outputs(a: Path, b: Path) -> dict:
    """Each shipped file of both runs: byte-identical TFLite files; ONNX outputs equal on random inputs."""
    import numpy as np

    from deploykit.export.runtimes import open_runner

    result = {}
    for path in sorted(a.glob("model*.tflite")) + sorted(a.glob("model*.onnx")):
        other = b / path.name
        if not other.exists():
            continue
        if path.suffix == ".tflite":
            result[path.name] = "identical bytes" if path.read_bytes() == other.read_bytes() else "bytes differ"
            continue
        left, right = open_runner(path), open_runner(other)
        x = np.random.default_rng(0).standard_normal((8, *left.input_shape)).astype(np.float32)
        diff = float(np.abs(left.predict(x) - right.predict(x)).max())
        result[path.name] = f"max |diff| {diff:.2g}"
    return result


def baseline_tree(rev: str, folder: Path) -> str:
    """``rev`` of this repository extracted into ``folder`` (no git state touched); its commit."""
    commit = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, check=True, capture_output=True, text=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return commit.stdout.strip()


def markdown(data: dict) -> str:
    lines = [
        "# Export speed: one conversion per model (this checkout) against the baseline",
        "",
        f"Baseline `{data['baseline']}`, this checkout `{data['this']}`. `deploykit optimize` {' '.join(SHORT)} "
        f"--quantize {VARIANTS}; the runs alternate baseline / this. CPU s: the optimize process's user + system "
        "time; wall (loaded): 2 cores shared with other jobs. Ratio: baseline / this (above 1: faster).",
        "",
        "| model | run | CPU s | wall s (loaded) | export steps s | CPU ratio | wall ratio | export ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, case in data["models"].items():
        for pair, (old, new) in enumerate(zip(case["baseline"], case["this"])):
            ratios = [old[k] / new[k] if new[k] else float("nan") for k in ("cpu_s", "wall_s", "export_steps_s")]
            lines.append(
                f"| {name} | {pair + 1} | {old['cpu_s']} → {new['cpu_s']} | {old['wall_s']} → {new['wall_s']} | "
                f"{old['export_steps_s']} → {new['export_steps_s']} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |"
            )
    lines += [
        "",
        "Files of the last pair compared (same files shipped by both: "
        + "; ".join(f"{n}: {'yes' if c['same_shipped'] else 'NO'}" for n, c in data["models"].items())
        + "):",
        "",
    ]
    for name, case in data["models"].items():
        lines.append(f"- {name}: " + ", ".join(f"`{f}` {v}" for f, v in case["outputs"].items()))
    lines += ["", "Export steps (seconds of the last pair, baseline → this):", ""]
    for name, case in data["models"].items():
        old, new = case["baseline"][-1]["steps"], case["this"][-1]["steps"]
        parts = [f"{k} {old[k]} → {new.get(k)}" for k in old if k.startswith("export ")]
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare against (default: main)")
    parser.add_argument("--pairs", type=int, default=1, help="baseline/this pairs per model (default: 1)")
    parser.add_argument("--models", default="default,efficientnetb0")
    parser.add_argument(
        "--calls", action="store_true", help="time the six export calls alone (results: export_speed_calls.*)"
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-export-speed-") as tmp:
        tmp = Path(tmp)
        (tmp / "baseline").mkdir()
        base = baseline_tree(args.baseline, tmp / "baseline")
        this = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        if args.calls:
            if "efficientnetb0" in args.models:
                efficientnet_case(tmp)
            models = {
                "default": ROOT / "models" / "digits_default.keras",
                "efficientnetb0": tmp / "efficientnetb0.keras",
            }
            main_calls(args, tmp, base, this, {m: models[m] for m in args.models.split(",") if m in models})
            return
        cases = {"default": []}
        if "efficientnetb0" in args.models:
            say("building EfficientNetB0 (weights=None) and its random data")
            cases["efficientnetb0"] = efficientnet_case(tmp)
        kwargs = {"folder": args.out} if args.out else {}
        data = {"baseline": base, "this": this, "command": SHORT + ["--quantize", VARIANTS], "models": {}}
        for name in [m for m in args.models.split(",") if m in cases]:
            runs = {"baseline": [], "this": []}
            for pair in range(args.pairs):
                for side, code in (("baseline", tmp / "baseline"), ("this", ROOT)):
                    say(f"{name}: {side} run {pair + 1}")
                    runs[side].append(run(code, cases[name], tmp / f"{name}_{side}"))
                    say(f"  {runs[side][-1]['cpu_s']} CPU s, {runs[side][-1]['wall_s']} s wall")
            outputs = same_outputs(tmp / f"{name}_baseline", tmp / f"{name}_this")
            same = runs["baseline"][-1]["shipped"] == runs["this"][-1]["shipped"]
            case = {**runs, "outputs": outputs, "same_shipped": same}
            for key in ("cpu_s", "wall_s", "export_steps_s"):
                old, new = (sum(r[key] for r in case[side]) for side in ("baseline", "this"))
                case[f"{key}_ratio"] = round(old / new, 3) if new else None
            data["models"][name] = case
            write_results("export_speed", data, markdown(data), **kwargs)  # after each model: a timeout keeps some


if __name__ == "__main__":
    main()
