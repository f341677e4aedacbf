"""The sparsity sensitivity scan on keras.applications MobileNetV3Small: eager calls against one traced function.

A Keras 3 MobileNetV3Small (``weights=None``, 32x32x3, 10 classes, 3 epochs on scikit-learn's digits scaled up)
is saved with ``model.save`` and imported by deploykit (239 tf_keras layers, its hard-swish as op layers). The
scan prunes each prunable layer alone at 6 levels and scores the validation rows after each: 1 + layers x levels
evaluations. Side by side in one process: the scan as it was (each evaluation an eager call,
``deploykit.core.evaluate.score``) and the scan as it is (``deploykit.sparsity.search._sensitivity``: one traced
function, weights swapped in place); evaluations, tracings, wall and CPU seconds, and whether both give the same
sensitivities.

Writes ``benchmarks/results/scan.json`` and ``scan.md``. Run from the repository root:

    python benchmarks/bench_scan.py [--rows 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import bench_models as bm
from common import ROOT, write_results  # noqa: E402  (puts the repository on sys.path)

BUILD = textwrap.dedent("""
    import sys, numpy as np, keras
    keras.utils.set_random_seed(0)
    z = np.load(sys.argv[2])
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=10)
    for layer in model.layers:  # statistics that settle within a few hundred steps (as bench_foreign trains it)
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(z["x_train"], z["y_train"], epochs=3, batch_size=32, verbose=0)
    model.save(sys.argv[1])
""")


def measured(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, round(time.perf_counter() - wall, 1), round(time.process_time() - cpu, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200, help="validation rows each evaluation scores (default: 200)")
    args = ap.parse_args()
    import numpy as np
    from sklearn.datasets import load_digits

    from deploykit.core import compiled
    from deploykit.core.evaluate import Budget, Metric
    from deploykit.data.dataset import Dataset
    from deploykit.io.models import load_model
    from deploykit.sparsity.config import PruneConfig, SearchConfig
    from deploykit.sparsity.search import LEVELS, _prunable, _sensitivity

    images, y = load_digits(return_X_y=True)  # 8x8, 0-16: as 32x32x3 pixels 0-255
    x = np.repeat(np.kron(images.reshape(-1, 8, 8), np.ones((4, 4)))[..., None] * 16, 3, axis=-1).astype(np.float32)
    n = args.rows
    with tempfile.TemporaryDirectory() as tmp:
        path, digits = Path(tmp) / "mobilenet_v3_small.keras", Path(tmp) / "digits.npz"
        np.savez(digits, x_train=x[: -2 * n], y_train=y[: -2 * n])
        done = bm.plain_keras3(BUILD, str(path), str(digits))
        if done.returncode:
            sys.exit(f"building the model failed: {(done.stderr.strip().splitlines() or [''])[-1]}")
        model = load_model(path)
    data = Dataset("digits32", x[:n], y[:n], x[-2 * n : -n], y[-2 * n : -n], x[-n:], y[-n:], tuple("0123456789"))
    layers, _ = _prunable(model, data, PruneConfig(), SearchConfig().min_layer_weights)
    budget = Budget(Metric.ACCURACY, 0.01)
    made = []

    def counted(base):
        def make(*a, **k):
            made.append(base(*a, **k))
            return made[-1]

        return make

    eager, eager_wall, eager_cpu = measured(
        lambda: _sensitivity(model, data, layers, budget, evaluator=counted(compiled.EagerOutputs))
    )
    eager_calls = made[-1].calls
    traced, traced_wall, traced_cpu = measured(
        lambda: _sensitivity(model, data, layers, budget, evaluator=counted(compiled.CompiledOutputs))
    )
    same = {s.name: s.drops for s in traced} == {s.name: s.drops for s in eager}
    rows = [
        {
            "scan": "eager (before)",
            "evaluations": eager_calls,
            "traces": None,
            "wall_s": eager_wall,
            "cpu_s": eager_cpu,
        },
        {
            "scan": "traced (now)",
            "evaluations": made[-1].calls,
            "traces": made[-1].traces,
            "wall_s": traced_wall,
            "cpu_s": traced_cpu,
        },
    ]
    result = {
        "layers": len(model.layers),
        "scanned": len(layers),
        "levels": list(LEVELS),
        "rows": n,
        "rows_detail": rows,
        "same_sensitivities": same,
        "layers_with_a_drop": sum(any(d > 0 for d in s.drops) for s in eager),
        "cpu_ratio": round(eager_cpu / max(traced_cpu, 1e-9), 2),
    }
    lines = [
        "# Sensitivity scan of MobileNetV3Small: eager calls vs one traced function",
        "",
        f"keras.applications MobileNetV3Small (Keras 3 file, {len(model.layers)} tf_keras layers once imported), "
        f"{len(layers)} prunable layers x {len(LEVELS)} levels on {n} validation rows; both scans include copying the "
        "model; validation rows held out of its training. Wall times on 2 shared cores (loaded); CPU seconds are "
        "steadier.",
        "",
        "| scan | evaluations | traces | wall s (loaded) | CPU s |",
        "|---|---:|---:|---:|---:|",
        *(f"| {r['scan']} | {r['evaluations']} | {r['traces'] or '—'} | {r['wall_s']} | {r['cpu_s']} |" for r in rows),
        "",
        f"CPU ratio eager / traced: **{result['cpu_ratio']}x**; same sensitivities: **{same}** "
        f"({result['layers_with_a_drop']} of {len(layers)} layers lose accuracy at some level).",
    ]
    write_results("scan", result, "\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
