"""Structured shares spread uniformly or by cost (issue 23), side by side on the book network's trainings.

For each seed the book network is trained as ``bench_faster.py --seeds`` trains it (reused from ``--work`` when a
run of either script left it there), then ``prune_structured`` removes each share of ``--shares`` twice from the same
model: ``allocate="uniform"`` (that share of every hidden layer's units) and ``allocate="cost"`` (the same
multiply-adds, the least important units per multiply-add saved first). Both are fine-tuned alike (distilled,
``--epochs``, early stopping on the validation loss) with no time budget, so only the allocation differs. Per try:
the units kept, the MAC reduction, the validation and test change against the trained model (accuracy points), the
epochs the early stopping ran, and the b1 / b256 speed-up of its float32 ONNX over the trained model's (onnxruntime,
1 intra-op thread, interleaved; ``bench_faster.timed``). Writes ``results/structured_allocate.json`` and ``.md``::

    python benchmarks/bench_structured_allocate.py --seeds 0,1,2,3,4 --shares 0.5,0.8 [--work DIR]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from bench_faster import FASHION, prepared, timed  # noqa: E402  (common puts the repository on sys.path)
from common import RESULTS, write_results  # noqa: E402

ALLOCATIONS = ("uniform", "cost")


def run_seed(seed: int, shares: list[float], epochs: int, work: Path) -> list[dict]:
    """Every share x allocation pruned from the seed's trained model, scored and timed."""
    from deploykit.core.evaluate import score
    from deploykit.export import export_onnx
    from deploykit.io.models import load_model
    from deploykit.sparsity import StructuredConfig, prune_structured

    path, data, _, _ = prepared("book", work, seed)
    model = load_model(path)
    base = {split: score(model, getattr(data, f"x_{split}"), getattr(data, f"y_{split}")) for split in ("val", "test")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {"original": export_onnx(model, Path(tmp) / "original.onnx", quantization="float32").path}
        for share in shares:
            for allocate in ALLOCATIONS:
                start = time.perf_counter()
                config = StructuredConfig(fraction=share, allocate=allocate, distill=True, epochs=epochs)
                result, report = prune_structured(model, data, config=config)
                key = f"{allocate}_{share}"
                files[key] = export_onnx(result, Path(tmp) / f"{key}.onnx", quantization="float32").path
                after = {s: score(result, getattr(data, f"x_{s}"), getattr(data, f"y_{s}")) for s in ("val", "test")}
                rows.append(
                    {
                        "seed": seed,
                        "share": share,
                        "allocate": allocate,
                        "units": [[layer.units_before, layer.units_after] for layer in report.layers],
                        "mac_ratio": round(report.mac_ratio, 3),
                        "val_change_pt": round(100 * (after["val"] - base["val"]), 2),
                        "test_change_pt": round(100 * (after["test"] - base["test"]), 2),
                        "epochs_run": report.epochs_run,
                        "seconds": round(time.perf_counter() - start, 1),
                        "key": key,
                    }
                )
                print(rows[-1], flush=True)
        times = timed(files, data.x_test)
    for row in rows:
        b1, b256 = times[row.pop("key")]
        row["b1_speedup"] = round(times["original"][0] / b1, 2)
        row["b256_speedup"] = round(times["original"][1] / b256, 2)
    return rows


def render(rows: list[dict], epochs: int) -> str:
    lines = [
        "# Structured shares: uniform vs cost-aware allocation (issue 23)",
        "",
        f"The book network on the Fashion sample, trained per seed as `bench_faster.py --seeds` does; each share "
        f"pruned twice from the same model, distilled fine-tune of at most {epochs} epochs with early stopping on "
        "the validation loss, no time budget. Δ: accuracy points against the trained model (validation ~540 rows: "
        "one row is 0.18 pt). Speed-ups: the trained model's float32 ONNX over the pruned one's, onnxruntime, 1 "
        "intra-op thread, fastest of interleaved calls (loaded machine).",
        "",
        "| seed | share | allocate | units (hidden layers) | MACs fewer | Δ val | Δ test | epochs run | b1 / b256 |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        units = ", ".join(f"{b}->{a}" for b, a in r["units"])
        lines.append(
            f"| {r['seed']} | {r['share']:.0%} | {r['allocate']} | {units} | {r['mac_ratio']:.2f}x | "
            f"{r['val_change_pt']:+.2f} | {r['test_change_pt']:+.2f} | {r['epochs_run']} | "
            f"{r['b1_speedup']:.2f}x / {r['b256_speedup']:.2f}x |"
        )
    lines.append("")
    for share in sorted({r["share"] for r in rows}):
        for allocate in ALLOCATIONS:
            sel = [r for r in rows if r["share"] == share and r["allocate"] == allocate]
            if sel:
                lines.append(f"- {share:.0%} {allocate}: {_summary(sel)}")
    return "\n".join(lines) + "\n"


def _summary(sel: list[dict]) -> str:
    """Mean and worst of one share x allocation over the seeds."""

    def mean(key: str) -> float:
        return sum(r[key] for r in sel) / len(sel)

    return (
        f"over {len(sel)} seeds, Δ val mean {mean('val_change_pt'):+.2f} pt (worst "
        f"{min(r['val_change_pt'] for r in sel):+.2f}), Δ test mean {mean('test_change_pt'):+.2f} pt (worst "
        f"{min(r['test_change_pt'] for r in sel):+.2f}), b256 speed-up mean {mean('b256_speedup'):.2f}x (min "
        f"{min(r['b256_speedup'] for r in sel):.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated training seeds (default: %(default)s)")
    parser.add_argument("--shares", default="0.5,0.8", help="comma-separated structured shares (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs per try (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=None, help="trained models kept and reused here")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    args = parser.parse_args()
    if not FASHION.exists():
        raise SystemExit("the Fashion sample is absent (../shared/data): nothing to measure")
    shares = [float(v) for v in args.shares.split(",") if v.strip()]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for seed in [int(v) for v in args.seeds.split(",") if v.strip()]:
            print(f"--- book MLP, seed {seed}", flush=True)
            rows += run_seed(seed, shares, args.epochs, work)
            data = {"machine": platform.processor() or platform.machine(), "epochs": args.epochs, "rows": rows}
            write_results("structured_allocate", data, render(rows, args.epochs), args.out, quiet=True)
    print(render(rows, args.epochs))


if __name__ == "__main__":
    main()
