"""Issue 23's CNN targets: `optimize` on two convnets of the Fashion-MNIST sample, smallest and fastest in budget.

Two convnets users train on 28x28 images (the small CNN: Rescaling -> Conv32 -> BN -> ReLU -> pool -> Conv64 ->
BN -> ReLU -> pool -> Dense 10; the keras.io "Simple MNIST convnet"), each trained briefly on the training split
of the Fashion-MNIST sample, then run through ``deploykit.optimize`` with its defaults, ``structured=0.5``
(``--structured 0.5``) and a time budget of :data:`TIME_BUDGET` minutes (``--time-budget``: on a shared
2-core machine the unbounded search plans hours), ONNX and TFLite. Per model:

- the smallest shipped artifact's gzip size against the original's float32 weights, gzip -9 (target >= 12x;
  TF-MOT 80% + onnxruntime int8 anchor: 9.4x), with its test accuracy change and paired 95% interval;
- every shipped ONNX file timed against the original model's float32 ONNX (exported unchanged), interleaved in
  one process, onnxruntime with 1 intra-op thread, batch 1 and 256: the median speed-up with a 95% bootstrap
  interval of the ratio of medians (target at batch 256: >= 1.5x within the budget);
- what the int8 search tried (the convnet's ONNX int8 is ``int8-static`` first) and which layers stayed float.

Needs ``../shared/data/fashion_mnist_3615.npz`` (skipped without it). Writes ``benchmarks/results/cnn.json``
and ``.md``; run it once, on a quiet machine if possible (wall times are what they are under load)::

    python benchmarks/bench_cnn.py
"""

from __future__ import annotations

import gzip
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_faster import keras_io_convnet, small_cnn
from common import FASHION, write_results  # noqa: E402  (puts the repository on sys.path)

REPEATS = {1: 200, 256: 20}
EPOCHS = 6  # batch 32: enough steps for BatchNorm's moving statistics (momentum 0.99) to settle
#: Minutes each optimize run may take (``--time-budget``): the search plans its tries within it.
TIME_BUDGET = 14


def weights_gzip(model) -> int:
    """gzip -9 of the model's float32 weights, concatenated: the baseline of the 12x target."""
    raw = b"".join(np.asarray(w, np.float32).tobytes() for w in model.get_weights())
    return len(gzip.compress(raw, compresslevel=9, mtime=0))


def speedups(files: dict[str, Path], base: str, x: np.ndarray) -> dict[str, dict]:
    """Per file and batch: median ms and the speed-up vs ``base`` with a 95% bootstrap interval (1 thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in files.items()}
    rng = np.random.default_rng(0)
    out: dict[str, dict] = {k: {} for k in files}
    for batch, repeats in REPEATS.items():
        xb = np.resize(x, (batch, *x.shape[1:])).astype(np.float32)
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for s in sessions.values():
            s.run(None, {s.get_inputs()[0].name: xb})
        for _ in range(repeats):
            for k, s in sessions.items():
                start = time.perf_counter()
                s.run(None, {s.get_inputs()[0].name: xb})
                times[k].append(time.perf_counter() - start)
        b = np.array(times[base])
        for k, t in times.items():
            t = np.array(t)
            boot = [
                np.median(rng.choice(b, b.size)) / np.median(rng.choice(t, t.size)) for _ in range(1000)
            ]  # ratio of medians, both resampled
            out[k][batch] = {
                "ms": 1000 * float(np.median(t)),
                "speedup": float(np.median(b) / np.median(t)),
                "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            }
    return out


def run_model(name: str, build, data, folder: Path) -> dict:
    from deploykit.backend import keras, set_seed
    from deploykit.export import export_onnx
    from deploykit.pipeline import optimize

    set_seed(0)
    model = build(keras)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=EPOCHS, batch_size=32, verbose=0)
    original = export_onnx(model, folder / f"{name}_original.onnx", quantization="float32").path
    start, cpu = time.perf_counter(), time.process_time()
    result = optimize(
        model, data, out_dir=folder / name, structured=0.5, mc=False, time_budget=TIME_BUDGET, progress=print
    )
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    report = result.report
    shipped = [
        r for r in report["artifacts"] if r["verdict"] in ("pass", "not validated") and r["file"] != "original.keras"
    ]
    baseline = weights_gzip(model)
    onnx = {r["file"]: folder / name / r["file"] for r in shipped if r["file"].endswith(".onnx")}
    timed = speedups({"original float32": original, **onnx}, "original float32", data.x_test)
    int8_tries = [t for t in report.get("tries", []) if t.get("stage") == "int8"]
    return {
        "model": name,
        "weights_gzip": baseline,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "steps": [f"{s['step']}: {s['reason']}" for s in report.get("steps", [])],
        "int8_tries": int8_tries,
        "artifacts": [
            {
                "file": r["file"],
                "gzip": r["gzip_bytes"],
                "ratio_vs_weights": baseline / r["gzip_bytes"] if r["gzip_bytes"] else None,
                "accuracy_change": r["accuracy_change"],
                "ci95": r.get("ci95"),
                "verdict": r["verdict"],
                "timing": timed.get(r["file"]),
            }
            for r in report["artifacts"]
            if r["file"] != "original.keras"
        ],
        "original_timing": timed["original float32"],
    }


def main() -> None:
    if not FASHION.exists():
        print(f"{FASHION} is absent: nothing to measure")
        return
    from deploykit.data.dataset import load_dataset

    data = load_dataset(str(FASHION))
    if data.x_train.ndim != 4:  # 28x28 pixels: the convnets take 28x28x1 images
        import dataclasses

        data = dataclasses.replace(
            data, **{k: getattr(data, k).reshape(-1, 28, 28, 1) for k in ("x_train", "x_val", "x_test")}
        )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in (("small CNN", small_cnn), ("keras.io convnet", keras_io_convnet)):
            rows.append(run_model(name, build, data, Path(tmp)))
    write_results("cnn", {"machine": platform.processor() or platform.machine(), "rows": rows}, render(rows))


def _pt(v) -> str:
    return "—" if v is None else f"{100 * v:+.2f} pt"


def _ci(ci) -> str:
    return "" if not ci else f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"


def _speed(t, batch) -> str:
    if not t:
        return "—"
    s = t[batch]
    return f"{s['speedup']:.2f}x [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] ({s['ms']:.2f} ms)"


def render(rows: list[dict]) -> str:
    lines = [
        "# CNN targets: `optimize --structured 0.5` on two convnets (Fashion-MNIST sample)",
        "",
        f"Trained {EPOCHS} epochs on the sample's training split; `deploykit.optimize` with its defaults and "
        f"structured=0.5, time budget {TIME_BUDGET} min, mc off. Ratio: the original's float32 weights, gzip -9, "
        "over the artifact's gzip size "
        "(target >= 12x for the smallest in budget). Speed-up: the original model's float32 ONNX over the "
        "artifact, onnxruntime, 1 thread, medians interleaved in one run, 95% bootstrap interval (target >= "
        "1.5x at batch 256 within the budget). Accuracy change: test split vs the original, paired 95% interval. "
        "Wall times (loaded): the machine was shared.",
        "",
    ]
    for r in rows:
        lines += [
            f"## {r['model']} (float32 weights {r['weights_gzip'] / 1024:.1f} KiB gzip; optimize {r['wall_s']} s wall, "
            f"{r['cpu_s']} s CPU, loaded)",
            "",
            "| artifact | verdict | gzip | ratio vs weights | test change [95% CI] | b1 speed-up | b256 speed-up |",
            "|---|---|---:|---:|---|---|---|",
        ]
        for a in r["artifacts"]:
            ratio = f"{a['ratio_vs_weights']:.1f}x" if a["ratio_vs_weights"] else "—"
            lines.append(
                f"| {a['file']} | {a['verdict']} | {a['gzip'] / 1024:.1f} KiB | {ratio} | "
                f"{_pt(a['accuracy_change'])}{_ci(a['ci95'])} | {_speed(a['timing'], 1)} | {_speed(a['timing'], 256)} |"
            )
        lines += ["", "Steps:", ""] + [f"- {s}" for s in r["steps"]] + [""]
        if r["int8_tries"]:
            lines += ["int8 tries:", ""] + [
                f"- {t.get('setting')}: {t.get('note') or ''} {'(kept)' if t.get('kept') else ''}".rstrip()
                for t in r["int8_tries"]
            ]
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
