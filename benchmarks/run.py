"""Every deploykit benchmark in one run, written to benchmarks/RESULTS.md.

1. ``deploykit optimize`` with no arguments (the shipped model on digits), run as
   the command a user types, timed end to end (target: under 2 minutes).
2. The pipeline on the 784-input Fashion-MNIST sample (``../shared/data/
   fashion_mnist_3615.npz`` from the repository root; skipped with a message
   when absent): the chapter's 784-300-100-10 model with BatchNorm and dropout,
   trained with ``deploykit.train``, then ``deploykit.optimize`` with its defaults.
3. The area benchmarks ``benchmarks/bench_*.py`` (fold, graph, sparsity, export, MC,
   serve, train, budget), each in its own process; they write ``benchmarks/results/
   <name>.json|md``, which RESULTS.md includes when this run wrote them.

Every figure is measured in this one run; comparisons are given as ratios.
Writes ``benchmarks/results/optimize.json|md`` and ``benchmarks/RESULTS.md``::

    python benchmarks/run.py                      # everything
    python benchmarks/run.py --skip serve,train   # leave some area benchmarks out
    python benchmarks/run.py --no-areas           # only the pipeline runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import FASHION, RESULTS, ROOT  # noqa: E402  (puts the repository on sys.path)

BUDGET_SECONDS = 120.0  # `deploykit optimize` with no arguments must finish within this
#: Area benchmarks that need more than ``--timeout`` (bench_budget trains and optimizes several models; bench_zoo
#: exports every keras.applications architecture; bench_scale optimizes models up to ResNet50 and 16x the data;
#: bench_time_budget trains EfficientNetB0, then runs it with --time-budget 10).
TIMEOUT_FACTOR = {"bench_budget": 6.0, "bench_zoo": 8.0, "bench_scale": 8.0, "bench_ray": 2.0, "bench_time_budget": 3.0}
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def default_cli_run(tmp: Path) -> dict:
    """`deploykit optimize --out DIR` exactly as a user runs it (fresh process: TensorFlow import included)."""
    out = tmp / "digits"
    say("digits: `deploykit optimize` (shipped model, default pipeline)")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "deploykit.cli.main", "optimize", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"deploykit optimize failed ({done.returncode}): {done.stderr.strip().splitlines()[-1]}")
    return {
        "data": "digits (shipped model)",
        "command": "deploykit optimize",
        "wall_seconds": round(seconds, 1),
        "report": json.loads((out / "report.json").read_text()),
    }


def fashion_run(tmp: Path) -> dict | None:
    """The chapter's 784-300-100-10 model (BN + dropout) on the Fashion-MNIST sample, through the default pipeline."""
    if not FASHION.exists():
        say(f"Fashion-MNIST sample not found at {FASHION}: skipped")
        return None
    import deploykit
    from deploykit.training import TrainConfig

    data = deploykit.load_dataset(FASHION)
    config = TrainConfig(
        hidden=(300, 100),
        batchnorm="on",
        dropout=0.2,
        dropout_layers="all",
        learning_rate=2e-3,
        epochs=20,
        patience=5,
        seed=42,
    )
    say(f"fashion: training the chapter's 784-300-100-10 model ({data.summary()})")
    trained = deploykit.train(config, data)
    say(f"fashion: trained, test accuracy {trained.test_accuracy:.4f}; optimizing")
    start = time.perf_counter()
    result = deploykit.optimize(trained.model, data, out_dir=tmp / "fashion", progress=lambda m: say("  " + m))
    return {
        "data": data.summary(),
        "command": "deploykit.optimize(model, data) after deploykit.train",
        "wall_seconds": round(time.perf_counter() - start, 1),
        "train_seconds": trained.record.seconds,
        "report": result.report,
    }


def headline(run: dict) -> dict:
    """The comparisons the issues ask for, as ratios, from one pipeline report."""
    report = run["report"]
    rows = {r["file"]: r for r in report["artifacts"]}
    original = rows["original.keras"]
    out: dict = {"wall_seconds": run["wall_seconds"]}
    if "model_int8-full.tflite" in rows:
        r = rows["model_int8-full.tflite"]
        out["pruned_int8_tflite"] = {
            "gzip_vs_original_keras_file": original["size_bytes"] / r["gzip_bytes"],
            "gzip_vs_original_keras_gzip": original["gzip_bytes"] / r["gzip_bytes"],
            "accuracy_change_points": 100 * r["accuracy_change"],
            "sparsity": r["sparsity"],
        }
    if "model.onnx" in rows:
        out["onnxruntime_vs_keras_call_b1"] = original["latency_b1_ms"] / rows["model.onnx"]["latency_b1_ms"]
    for fmt in ("onnx", "tflite"):
        base = rows.get(f"model.{fmt}")
        for precision, variant in (("float16", "float16"), ("int8", "int8-dynamic" if fmt == "onnx" else "int8-full")):
            r = rows.get(f"model_{variant}.{fmt}")
            if base and r:
                out[f"{fmt}_{precision}_vs_float32"] = {
                    "b1_speedup": base["latency_b1_ms"] / r["latency_b1_ms"],
                    "b256_speedup": r["throughput_b256"] / base["throughput_b256"],
                    "gzip_smaller": base["gzip_bytes"] / r["gzip_bytes"],
                    "accuracy_change_points": 100 * (r["accuracy"] - base["accuracy"]),
                }
    if "model_mc.onnx" in rows and "model.onnx" in rows:
        mc = report["mc"]
        out["mc"] = {
            "samples": mc["samples"],
            "b1_cost_vs_plain_onnx": rows["model_mc.onnx"]["latency_b1_ms"] / rows["model.onnx"]["latency_b1_ms"],
            "accuracy": mc["mc"]["accuracy"],
            "deterministic_accuracy": mc["deterministic"]["accuracy"],
            "ece": mc["mc"]["ece"],
            "deterministic_ece": mc["deterministic"]["ece"],
        }
    steps = {s["step"]: s for s in report["steps"]}
    fold = steps.get("fold")
    if fold and fold.get("before") and fold.get("after"):
        out["fold_params"] = [fold["before"]["params"], fold["after"]["params"]]
    sparse = next((s for name, s in steps.items() if name.startswith("sparsity") and s.get("after")), None)
    if sparse:
        out["sparsity_step"] = {
            "seconds": sparse["seconds"],
            "sparsity": sparse["after"]["sparsity"],
            "accuracy_change_points": 100 * (sparse["after"]["accuracy"] - sparse["before"]["accuracy"]),
        }
    return out


def run_area(script: Path, timeout: float) -> dict:
    """Run one area benchmark in its own process."""
    say(f"area benchmark {script.name}")
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        tail = "" if done.returncode == 0 else (done.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        status, tail = f"timed out after {timeout:.0f} s", ""
    seconds = time.perf_counter() - start
    say(f"  {script.name}: {status} in {seconds:.0f} s")
    return {"script": f"benchmarks/{script.name}", "status": status, "seconds": round(seconds, 1), "error": tail}


def _ratio_rows(name: str, h: dict) -> list[str]:
    if name == "digits":
        rows = [
            f"| {name} | `deploykit optimize` with no arguments, wall time (TensorFlow import included) "
            f"| {h['wall_seconds']:.0f} s | {BUDGET_SECONDS / h['wall_seconds']:.2f}x under the {BUDGET_SECONDS:.0f} s "
            "budget |"
        ]
    else:
        rows = [f"| {name} | `deploykit.optimize` wall time (training not included) | {h['wall_seconds']:.0f} s | |"]
    if "pruned_int8_tflite" in h:
        p = h["pruned_int8_tflite"]
        rows.append(
            f"| {name} | pruned ({100 * p['sparsity']:.0f}%) + full int8 TFLite, gzip vs the original .keras file "
            f"| {p['gzip_vs_original_keras_file']:.1f}x smaller ({p['gzip_vs_original_keras_gzip']:.1f}x vs its gzip) "
            f"| accuracy {p['accuracy_change_points']:+.2f} pt (targets: >= 12x, within 1 pt) |"
        )
    if "onnxruntime_vs_keras_call_b1" in h:
        rows.append(
            f"| {name} | onnxruntime float32 vs tf_keras `model(x)`, batch 1 | "
            f"{h['onnxruntime_vs_keras_call_b1']:.0f}x faster | target >= 50x |"
        )
    for key, label in (
        ("onnx_float16", "onnxruntime float16"),
        ("onnx_int8", "onnxruntime int8 (dynamic)"),
        ("tflite_float16", "LiteRT float16"),
        ("tflite_int8", "LiteRT int8 (full integer)"),
    ):
        r = h.get(f"{key}_vs_float32")
        if r:
            rows.append(
                f"| {name} | {label} vs float32 | b1 {r['b1_speedup']:.2f}x, b256 {r['b256_speedup']:.2f}x speed; "
                f"{r['gzip_smaller']:.1f}x smaller gzip | accuracy {r['accuracy_change_points']:+.2f} pt |"
            )
    if "mc" in h:
        m = h["mc"]
        rows.append(
            f"| {name} | MC Dropout ONNX (T = {m['samples']}) vs plain ONNX, batch 1 | "
            f"{m['b1_cost_vs_plain_onnx']:.1f}x the time "
            f"| accuracy {m['deterministic_accuracy']:.4f} -> {m['accuracy']:.4f}, ECE {m['deterministic_ece']:.4f} -> "
            f"{m['ece']:.4f} |"
        )
    if "fold_params" in h:
        b, a = h["fold_params"]
        rows.append(
            f"| {name} | BatchNorm + standardization folded | parameters {b:,} -> {a:,} ({b / a:.2f}x fewer) | exact "
            "(max diff checked) |"
        )
    if "sparsity_step" in h:
        s = h["sparsity_step"]
        rows.append(
            f"| {name} | pruning step (fine-tuning included) | {s['seconds']:.0f} s, model sparsity "
            f"{100 * s['sparsity']:.0f}% "
            f"| accuracy {s['accuracy_change_points']:+.2f} pt |"
        )
    return rows


def _artifact_table(report: dict) -> list[str]:
    from deploykit.pipeline.records import ArtifactRow, Verdict
    from deploykit.pipeline.report import COLUMNS, artifact_cells, markdown_table

    rows = [artifact_cells(ArtifactRow(**{**r, "verdict": Verdict(r["verdict"])})) for r in report["artifacts"]]
    return [markdown_table(COLUMNS, rows, right=range(3, 12))]


def write_results(runs: dict, areas: list[dict], started: float) -> None:
    from deploykit.atomic import write_text

    heads = {name: headline(run) for name, run in runs.items() if run}
    text = json.dumps({"runs": runs, "headline": heads}, indent=1, default=str)
    # the reports record absolute paths (so a written deploykit.toml reruns anywhere); results name them from the root
    text = text.replace(json.dumps(str(ROOT.parent / "shared"))[1:-1], "../shared").replace(
        json.dumps(str(ROOT) + "/")[1:-1], ""
    )
    write_text(RESULTS / "optimize.json", text + "\n")
    lines = [
        "# deploykit benchmarks",
        "",
        f"All figures below were measured in one run of `python benchmarks/run.py` on {os.cpu_count()} CPU cores "
        f"({platform.machine()}, Python {platform.python_version()}); other processes shared the machine, so latency "
        "figures carry noise. Comparisons are ratios.",
        "",
        "## The pipeline: headline ratios",
        "",
        "| data | comparison | measured | note |",
        "|---|---|---|---|",
    ]
    for name, h in heads.items():
        lines += _ratio_rows(name, h)
    if not runs.get("fashion"):
        lines += ["", f"Fashion-MNIST: skipped (the sample is not at `../shared/data/{FASHION.name}`)."]
    for name, run in runs.items():
        if run:
            lines += [
                "",
                f"### `{name}`: {run['data']}",
                "",
                f"Ran: {run['command']}.",
                "",
                *_artifact_table(run["report"]),
            ]
    lines += ["", "## Area benchmarks", ""]
    for a in areas:
        name = Path(a["script"]).stem.removeprefix("bench_")
        md = RESULTS / f"{name}.md"
        lines += [f"### {name} (`python {a['script']}`: {a['status']}, {a['seconds']:.0f} s)", ""]
        if a["error"]:
            lines += [f"Error: `{a['error']}`", ""]
        if md.exists() and md.stat().st_mtime >= started:
            body = md.read_text().strip().splitlines()
            lines += ["#### " + l.lstrip("# ") if l.startswith("#") else l for l in body] + [""]
        else:
            lines += ["(no results written in this run)", ""]
    lines += [f"Total: {time.monotonic() - T0:.0f} s.", ""]
    write_text(RESULTS / "optimize.md", "\n".join(lines[: lines.index("## Area benchmarks")]) + "\n")
    write_text(ROOT / "benchmarks" / "RESULTS.md", "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip", default="", help="area benchmarks to leave out, e.g. serve,train")
    p.add_argument("--no-areas", action="store_true", help="run only the pipeline benchmarks")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per area benchmark (default: 900)")
    args = p.parse_args(argv)
    started = time.time()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-") as tmp:
        runs = {"digits": default_cli_run(Path(tmp)), "fashion": fashion_run(Path(tmp))}
    areas = []
    if not args.no_areas:
        for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
            if script.stem.removeprefix("bench_") not in skip:
                areas.append(run_area(script, args.timeout * TIMEOUT_FACTOR.get(script.stem, 1.0)))
    write_results(runs, areas, started)
    say(f"wrote {ROOT / 'benchmarks' / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
