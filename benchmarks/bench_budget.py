"""Accuracy-budget benchmark: `deploykit optimize` with its defaults keeps every shipped artifact within 1 point.

Side by side in one run (ratios):
- the book's Fashion-MNIST network (chapter 11: Flatten -> Normalization -> Dense(300, no bias) -> BN -> ELU
  -> Dropout -> Dense(100, no bias) -> BN -> ELU -> Dropout -> Dense(10, softmax); Nadam 1e-3, early
  stopping) and its SELU + AlphaDropout variant (Table 11-4), trained with ``--seeds`` different seeds on
  the Fashion sample, then ``deploykit optimize MODEL --data SAMPLE`` with defaults, in its own process:
  exit status, no crash, every shipped artifact within 1 point of the original, wall and CPU time, and the
  smallest shipped artifact's gzip size vs the original float32 weights (target >= 12x);
- the shipped digits model, the same way (target >= 12x within 1 point);
- TF-MOT's documented recipe on the same trained model (prune_low_magnitude to the sparsity deploykit
  kept, the same fine-tuning epochs, strip_pruning, TFLite full int8), vs deploykit's int8 TFLite;
- distillation vs plain fine-tuning at equal epochs, pruning to 80% and 90% (the first model kind, seed 0).

Each optimize (and each TF-MOT conversion) runs in a child process, so a native crash is counted, not fatal.
Writes benchmarks/results/budget.json and budget.md. Run from the repository root:

    python benchmarks/bench_budget.py --seeds 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import FASHION, ROOT  # noqa: E402  (puts the repository on sys.path)
from common import write_results as _write_results  # noqa: E402

DIGITS_MODEL = ROOT / "models" / "digits_default.keras"
BUDGET = 0.01
TARGET_RATIO = 12.0
KINDS = ("bn_elu_dropout", "selu_alphadropout")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build(kind: str, data):
    """The chapter's network (tf_keras), the Normalization adapted on the training split."""
    from deploykit.backend import keras

    norm = keras.layers.Normalization()
    norm.adapt(data.x_train.reshape(len(data.x_train), -1))
    layers = [keras.Input(shape=data.input_shape), keras.layers.Flatten(), norm]
    for width in (300, 100):
        if kind == "bn_elu_dropout":
            layers += [keras.layers.Dense(width, use_bias=False, kernel_initializer="he_normal"),
                       keras.layers.BatchNormalization(), keras.layers.Activation("elu"), keras.layers.Dropout(0.2)]
        else:
            layers += [keras.layers.Dense(width, activation="selu", kernel_initializer="lecun_normal"),
                       keras.layers.AlphaDropout(0.2)]
    layers.append(keras.layers.Dense(data.num_classes, activation="softmax"))
    return keras.Sequential(layers)


def train(kind: str, data, seed: int, epochs: int = 15):
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    model = build(kind, data)
    model.compile(optimizer=keras.optimizers.Nadam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)
    model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), epochs=epochs, batch_size=32,
              verbose=0, callbacks=[stop])
    return model


def weights_gzip(path: Path) -> int:
    """gzip -9 size of a model's float32 weights (every array, concatenated): the baseline of the 12x target."""
    from deploykit.io import load_model

    model = load_model(str(path))
    raw = b"".join(np.asarray(w, np.float32).tobytes() for w in model.get_weights())
    return len(gzip.compress(raw, compresslevel=9, mtime=0))


def optimize_child(model: Path, data: str, out: Path) -> dict:
    """`deploykit optimize MODEL --data DATA --out OUT` in its own process: exit status, wall and CPU seconds, report."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "deploykit.cli.main", "optimize", str(model), "--data", data,
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = {"exit": done.returncode, "crashed": done.returncode < 0 or done.returncode > 128,
           "wall_seconds": round(time.perf_counter() - start, 1),
           "cpu_seconds": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
           "stderr_tail": done.stderr.strip().splitlines()[-1:] if done.returncode else []}
    report_path = out / "report.json"
    if report_path.exists():
        run.update(_summary(json.loads(report_path.read_text()), weights_gzip(model)))
    else:  # no report (a native crash): what the progress lines say the search kept
        kept = [line.split("kept ", 1)[1].split(":")[0] for line in done.stderr.splitlines() if "  kept prune " in line]
        run["kept_sparsity"] = kept[-1] if kept else "dense"
    return run


def _summary(report: dict, original_weights_gzip: int) -> dict:
    """What the targets need from one report: shipped artifacts, their accuracy change, the smallest one's ratio."""
    shipped = [r for r in report["artifacts"] if r["verdict"] in ("pass", "not validated") and r["file"] != "original.keras"]
    rejected = [r["file"] for r in report["artifacts"] if r["verdict"] == "rejected"]
    smallest = min(shipped, key=lambda r: r["gzip_bytes"]) if shipped else None
    kept = next((t for t in report["tries"] if t["stage"] == "sparsity" and t["kept"]), None)
    return {
        "original_accuracy": report["original"]["accuracy"],
        "kept_sparsity": kept["setting"] if kept else "dense",
        "tries": [(t["stage"], t["setting"], t["accuracy_change"], t["kept"]) for t in report["tries"]],
        "shipped": [r["file"] for r in shipped], "rejected": rejected,
        "worst_shipped_change_points": min((100 * r["accuracy_change"] for r in shipped if r["accuracy_change"] is not None), default=None),
        "all_within_budget": all(r["accuracy_change"] is not None and -r["accuracy_change"] <= BUDGET + 1e-12 for r in shipped),
        "smallest": smallest and smallest["file"], "smallest_gzip_bytes": smallest and smallest["gzip_bytes"],
        "ratio_vs_float32_weights_gzip": smallest and original_weights_gzip / smallest["gzip_bytes"],
        "ratio_vs_keras_gzip": smallest and report["original"]["keras_gzip_bytes"] / smallest["gzip_bytes"],
        "int8_tflite": next(({"gzip_bytes": r["gzip_bytes"], "accuracy_change": r["accuracy_change"], "verdict": r["verdict"],
                              "quantization": r["quantization"]}
                             for r in report["artifacts"] if r["format"] == "tflite" and r["precision"] == "int8"), None),
        "sparsity_epochs": report["config"]["sparsity"]["prune"]["epochs"],
        "seconds_in_report": report["seconds"],
    }


def tfmot_recipe(model_path: Path, data_source: str, sparsity: float, epochs: int, out: Path) -> dict:
    """TF-MOT's documented recipe, in a child process (LiteRT may crash natively on some int8 files)."""
    done = subprocess.run([sys.executable, __file__, "--tfmot-one", str(model_path), data_source, str(sparsity), str(epochs),
                           str(out)], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"exit": done.returncode, "crashed": done.returncode < 0 or done.returncode > 128,
                "error": (done.stderr.strip().splitlines() or [""])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tfmot_one(model_path: str, data_source: str, sparsity: float, epochs: int, out: str) -> None:
    """prune_low_magnitude on every Dense (PolynomialDecay 0 -> sparsity) + fine-tune + strip_pruning + TFLite full int8.

    Measured in LiteRT on the test split. TF-MOT's guide prunes the whole model, or, with layers it
    cannot wrap (Normalization here), the Dense layers through ``clone_model(..., clone_function=...)``.
    """
    from deploykit.backend import keras, set_seed, tf
    from deploykit.data import load_dataset
    from deploykit.io import load_model

    import tensorflow_model_optimization as tfmot

    data = load_dataset(data_source)
    model = load_model(model_path)
    # before pruning: the clone shares the layers TF-MOT wraps, so fine-tuning changes ``model`` too
    original = float(np.mean(np.argmax(np.asarray(model(data.x_test, training=False)), 1) == data.y_test))
    set_seed(0)
    steps = -(-len(data.x_train) // 32) * epochs
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=int(0.7 * steps))
    def dense_only(layer):  # TF-MOT's documented way when the model holds layers it cannot prune (Normalization)
        if isinstance(layer, keras.layers.Dense):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    pruned = keras.models.clone_model(model, clone_function=dense_only)
    pruned.compile(optimizer=keras.optimizers.Nadam(5e-4), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    pruned.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), epochs=epochs, batch_size=32, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    sample = data.sample_train(300)
    converter.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in sample)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    blob = converter.convert()
    Path(out).write_bytes(blob)
    from deploykit.export.runtimes import open_runner, predict_batches

    runner = open_runner(Path(out))
    probs = predict_batches(runner.predict, data.x_test)
    acc = float(np.mean(probs.argmax(1) == data.y_test))
    print(json.dumps({"exit": 0, "crashed": False, "accuracy": acc, "accuracy_change": acc - original,
                      "gzip_bytes": len(gzip.compress(blob, compresslevel=9, mtime=0)), "sparsity": sparsity, "epochs": epochs}))


def distillation_vs_plain(model, data, epochs: int) -> list[dict]:
    """Prune to 80% and 90% with and without distillation, same epochs: test, validation and training accuracy."""
    from deploykit.evaluate import accuracy
    from deploykit.sparsity import PruneConfig, prune

    rows = []
    for target in (0.8, 0.9):
        for distill in (False, True):
            start = time.perf_counter()
            pruned, report = prune(model, data, config=PruneConfig(target_sparsity=target, epochs=epochs, distill=distill))
            rows.append({"target": target, "distill": distill, "epochs": epochs, "test": report.accuracy_after,
                         "test_change_points": 100 * (report.accuracy_after - report.accuracy_before),
                         "val": accuracy(pruned, data.x_val, data.y_val), "train": accuracy(pruned, data.x_train, data.y_train),
                         "seconds": round(time.perf_counter() - start, 1)})
            say(f"  distill={distill} target={target}: test {rows[-1]['test']:.4f} train {rows[-1]['train']:.4f}")
    return rows


def run(seeds: int, kinds: tuple[str, ...], distill_epochs: int, tfmot_seeds: int) -> dict:
    from deploykit.data import load_dataset
    from deploykit.io import save_model

    results: dict = {"budget_points": 100 * BUDGET, "target_ratio": TARGET_RATIO, "fashion": [], "digits": None,
                     "distillation": {}}
    with tempfile.TemporaryDirectory(prefix="deploykit-budget-") as tmp:
        tmp = Path(tmp)
        say("digits: deploykit optimize (shipped model, defaults)")
        results["digits"] = optimize_child(DIGITS_MODEL, "digits", tmp / "digits")
        _save(results)
        if not FASHION.exists():
            say(f"Fashion sample not found at {FASHION}: the Fashion runs are skipped")
            return results
        data = load_dataset(str(FASHION))
        for kind in kinds:
            for seed in range(seeds):
                say(f"fashion {kind} seed {seed}: training")
                model = train(kind, data, seed)
                path = save_model(model, tmp / f"{kind}_{seed}.keras")
                say(f"fashion {kind} seed {seed}: optimize")
                entry = {"kind": kind, "seed": seed, **optimize_child(path, str(FASHION), tmp / f"out_{kind}_{seed}")}
                say(f"  exit {entry['exit']}, shipped {entry.get('shipped')}, smallest {entry.get('ratio_vs_float32_weights_gzip')}")
                sparsity = _kept_target(entry)
                if sparsity and seed < tfmot_seeds:
                    say(f"fashion {kind} seed {seed}: TF-MOT recipe at {sparsity:.0%}")
                    entry["tfmot"] = tfmot_recipe(path, str(FASHION), sparsity, entry.get("sparsity_epochs", 30),
                                                  tmp / f"tfmot_{kind}_{seed}.tflite")
                    entry["tfmot"]["original_weights_gzip"] = weights_gzip(path)
                results["fashion"].append(entry)
                _save(results)
                if seed == 0 and distill_epochs and kind == kinds[0]:
                    say(f"fashion {kind}: distillation vs plain fine-tuning ({distill_epochs} epochs)")
                    results["distillation"][kind] = distillation_vs_plain(model, data, distill_epochs)
                    _save(results)
    return results


def write_results(name: str, results: dict, text: str, quiet: bool) -> None:
    if quiet:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            _write_results(name, results, text)
    else:
        _write_results(name, results, text)


def _save(results: dict) -> None:
    """Write what is measured so far (a long run stopped part-way still leaves its figures)."""
    write_results("budget", results, markdown(results), quiet=True)


def _kept_target(entry: dict) -> float | None:
    setting = entry.get("kept_sparsity", "dense")
    if not setting.startswith("prune "):
        return None
    return float(setting.split()[1].rstrip("%")) / 100


def markdown(r: dict) -> str:
    lines = ["# Accuracy budget: `deploykit optimize` with defaults (budget 1 point)", "",
             "Each `optimize` ran in its own process (`python -m deploykit.cli.main optimize MODEL --data DATA`). "
             "Ratio: the original float32 weights, gzip -9, over the smallest shipped artifact's gzip size "
             f"(target >= {TARGET_RATIO:g}x). CPU: user + system seconds of the child process.", "",
             "| model | seed | exit | crash | kept sparsity | shipped | rejected | worst shipped Δ (pt) | all within 1 pt "
             "| smallest shipped | ratio vs float32 weights | ratio vs .keras gzip | wall s | CPU s |",
             "|---|---:|---:|---|---|---:|---|---:|---|---|---:|---:|---:|---:|"]
    runs = ([("digits (shipped)", "—", r["digits"])] if r["digits"] else []) + [(e["kind"], e["seed"], e) for e in r["fashion"]]
    for name, seed, e in runs:
        ratio = e.get("ratio_vs_float32_weights_gzip")
        lines.append(
            f"| {name} | {seed} | {e['exit']} | {'yes' if e['crashed'] else 'no'} | {e.get('kept_sparsity', '—')} "
            f"| {len(e.get('shipped', []))} | {', '.join(e.get('rejected', [])) or '—'} "
            f"| {_f(e.get('worst_shipped_change_points'), '+.2f')} | {e.get('all_within_budget', '—')} | {e.get('smallest') or '—'} "
            f"| {_x(ratio)} | {_x(e.get('ratio_vs_keras_gzip'))} | {e['wall_seconds']:.0f} | {e['cpu_seconds']:.0f} |")
    ok = [e for e in r["fashion"] if e["exit"] == 0]
    lines += ["", f"Fashion runs exiting 0: {len(ok)}/{len(r['fashion'])}; crashes: {sum(e['crashed'] for e in r['fashion'])}."]
    tf_rows = [e for e in r["fashion"] if "tfmot" in e]
    if tf_rows:
        lines += ["", "## deploykit int8 TFLite vs TF-MOT's recipe (same sparsity, same fine-tuning epochs)", "",
                  "| model | seed | deploykit int8 TFLite: Δ pt, gzip KiB, verdict | TF-MOT: Δ pt, gzip KiB | deploykit / TF-MOT gzip |",
                  "|---|---:|---|---|---:|"]
        for e in tf_rows:
            d, t = e.get("int8_tflite") or {}, e["tfmot"]
            dk = f"{_f(d.get('accuracy_change') and 100 * d['accuracy_change'], '+.2f')}, {_f(d.get('gzip_bytes') and d['gzip_bytes'] / 1024, '.1f')}, {d.get('verdict', '—')}"
            tm = (f"{100 * t['accuracy_change']:+.2f}, {t['gzip_bytes'] / 1024:.1f}" if t.get("exit") == 0
                  else f"failed (exit {t.get('exit')}, crash: {t.get('crashed')})")
            ratio = d["gzip_bytes"] / t["gzip_bytes"] if d.get("gzip_bytes") and t.get("gzip_bytes") else None
            lines.append(f"| {e['kind']} | {e['seed']} | {dk} | {tm} | {_f(ratio, '.2f')} |")
    for kind, rows in r["distillation"].items():
        lines += ["", f"## Distillation vs plain fine-tuning ({kind}, seed 0, {rows[0]['epochs']} epochs each)", "",
                  "| target | fine-tuning | test | Δ test (pt) | validation | train | train - test (pt) |", "|---:|---|---:|---:|---:|---:|---:|"]
        for x in rows:
            lines.append(f"| {x['target']:.0%} | {'distilled' if x['distill'] else 'plain'} | {x['test']:.4f} | {x['test_change_points']:+.2f} "
                         f"| {x['val']:.4f} | {x['train']:.4f} | {100 * (x['train'] - x['test']):.1f} |")
    return "\n".join(lines) + "\n"


def _x(ratio) -> str:
    return "—" if ratio is None else f"{ratio:.1f}x"


def _f(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2, help="trainings per Fashion model (default 2; the issue asks for 5)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"models to train, among {', '.join(KINDS)}")
    p.add_argument("--distill-epochs", type=int, default=30, help="epochs of the distillation comparison (0: skip it)")
    p.add_argument("--tfmot-seeds", type=int, default=1, help="runs per model compared with TF-MOT's recipe (default 1)")
    p.add_argument("--tfmot-one", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tfmot_one:
        model, data, sparsity, epochs, out = args.tfmot_one
        _tfmot_one(model, data, float(sparsity), int(epochs), out)
        return 0
    results = run(args.seeds, tuple(k for k in args.kinds.split(",") if k), args.distill_epochs, args.tfmot_seeds)
    write_results("budget", results, markdown(results), quiet=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
