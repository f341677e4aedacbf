"""Uncertainty users can act on (issue 16): calibration, OOD detection and selective prediction, side by side.

The chapter's MC Dropout model (Flatten, standardization, Dropout(0.2) on the
input and after both hidden layers, 784-300-100-10, ELU, Nadam, early
stopping) trained on the Fashion-MNIST sample once per seed. For each training:

- deterministic softmax (tf2onnx export) and the same with temperature scaling;
- MC Dropout (T = 100) and MC + temperature (per sample or on the mean, as the
  validation NLL prefers);
- a deep ensemble of K members (this seed's model and K-1 more trainings), each
  through ``deploykit.optimize`` (fold, prune 80%, int8 ONNX), in one ONNX model,
  with and without a temperature on its mean;
- the same members with MC Dropout inside (T = 20 each, int8-dynamic), with
  and without a temperature;

test-split NLL, ECE (15 bins), Brier, AUROC of errors by entropy, OOD AUROC and
FPR at 95% TPR per measure (OOD set: scikit-learn's digits upsampled to 28x28),
and the test coverage at 99% target accuracy (threshold on the entropy, and on
the mutual information for MC / ensemble, chosen on the validation split).
Also: the ensemble's gzip size against one float32 original, and the speed of
one MC call (T = 100, one row) with pooled masks (deploykit.uncertainty.masks, the
default) and with ONNX Dropout, against the deterministic model on 100 rows and
the chapter's Keras loop, in one run (``--only-speed``: that part alone).

Run: ``nice python benchmarks/bench_uncertainty.py --seeds 0,1,2 --members 5``.
Writes ``benchmarks/results/uncertainty.json`` and ``uncertainty.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import FASHION, write_results  # noqa: E402  (puts the repository on sys.path)

from deploykit.export.runtimes import interleaved_medians  # noqa: E402

T = 100
MEMBER_T = 20  # MC samples inside each ensemble member: 5 members x 20 = the single MC model's 100
TARGET_ACCURACY = 0.99
BOOTSTRAP = 200  # resamples of the test rows for the standard error of the ECE
RATE = 0.2
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def chapter_model(data, seed: int):
    """The chapter's MC Dropout model, trained with Nadam and early stopping (best weights restored)."""
    from deploykit.backend import keras, set_seed
    from deploykit.training.model import standardization

    set_seed(seed)
    mean, var = standardization(data)
    model = keras.Sequential(
        [
            keras.Input(shape=data.input_shape),
            keras.layers.Flatten(),
            keras.layers.Normalization(mean=mean, variance=var),
            keras.layers.Dropout(RATE),
            keras.layers.Dense(300, activation="elu", kernel_initializer="he_normal"),
            keras.layers.Dropout(RATE),
            keras.layers.Dense(100, activation="elu", kernel_initializer="he_normal"),
            keras.layers.Dropout(RATE),
            keras.layers.Dense(data.num_classes, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Nadam(1e-3), loss="sparse_categorical_crossentropy")
    stop = keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)
    model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=40,
        batch_size=32,
        callbacks=[stop],
        verbose=0,
    )
    return model


def digits_ood(shape: tuple[int, ...], rows: int) -> np.ndarray:
    """``rows`` of scikit-learn's 8x8 digits (a seeded draw), bilinearly upsampled to 28x28, scaled to 0..255 like
    Fashion."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)
    images = images[np.sort(np.random.default_rng(0).choice(len(images), size=min(rows, len(images)), replace=False))]
    up = np.clip(zoom(images, (1, shape[0] / 8, shape[1] / 8), order=1), 0, 16) * (255.0 / 16)
    return up.astype(np.float32)


def run_onnx(path, x, outputs, batch=64):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    parts = [sess.run(outputs, {"input": x[i : i + batch]}) for i in range(0, len(x), batch)]
    return {
        name: np.concatenate(
            [p[k] for p in parts], axis=1 if name in ("sample_probabilities", "member_probabilities") else 0
        )
        for k, name in enumerate(outputs)
    }


def evaluate(data, ood, split_outputs: dict) -> dict:
    """Every figure of one method, from its outputs on val / test / ood (mean probs, optional MI)."""
    from deploykit.uncertainty import calibration, uncertainties
    from deploykit.uncertainty.measures import Measure
    from deploykit.uncertainty.ood import error_auroc, ood_report
    from deploykit.uncertainty.selective import SelectiveTarget, apply_threshold, choose_threshold

    u = {s: uncertainties(o["mean"], o.get("mutual_information")) for s, o in split_outputs.items()}
    test = split_outputs["test"]["mean"]
    cal = calibration(data.y_test, test)
    resample = np.random.default_rng(0).integers(0, len(test), (BOOTSTRAP, len(test)))
    ece_se = float(np.std([calibration(data.y_test[i], test[i]).ece for i in resample]))
    row = {
        "accuracy": cal.accuracy,
        "nll": cal.nll,
        "ece": cal.ece,
        "ece_se": ece_se,
        "brier": cal.brier,
        "auroc_errors_entropy": error_auroc(data.y_test, test.argmax(1), u["test"][Measure.ENTROPY]),
        "ood": {
            r.measure.value: {"auroc": r.auroc, "fpr_at_95_tpr": r.fpr_at_95_tpr}
            for r in ood_report(u["test"], u["ood"])
        },
        "coverage_at_target": {},
    }
    val_pred = split_outputs["val"]["mean"].argmax(1)
    for measure in u["val"]:
        if measure is Measure.MAX_PROB:
            continue
        chosen = choose_threshold(
            data.y_val, val_pred, u["val"][measure], measure, SelectiveTarget(target_accuracy=TARGET_ACCURACY)
        )
        result = apply_threshold(data.y_test, test.argmax(1), u["test"][measure], chosen.threshold)
        row["coverage_at_target"][measure.value] = {
            "threshold": chosen.threshold,
            "val_coverage": chosen.coverage,
            "test_coverage": result.coverage,
            "test_accuracy_kept": result.accuracy,
        }
    return row


def one_training(data, ood, seed: int, members: int, folder: Path) -> dict:
    import deploykit
    from deploykit.export import export_onnx
    from deploykit.pipeline.ensemble import mc_member, optimize_members
    from deploykit.uncertainty import export_mc_onnx, fit_mc_temperature, fit_temperature
    from deploykit.uncertainty.ensemble import MEMBERS_OUTPUT, ensemble_sizes, export_ensemble_onnx
    from deploykit.uncertainty.temperature import Placement, write_with_temperature

    splits = {"val": data.x_val, "test": data.x_test, "ood": ood}
    say(f"seed {seed}: training the chapter's MC Dropout model")
    model = chapter_model(data, seed * 100)
    rows, fits = {}, {}
    det = folder / "det.onnx"
    export_onnx(model, det)
    det_out = {s: {"mean": run_onnx(det, x, ["probabilities"])["probabilities"]} for s, x in splits.items()}
    rows["deterministic"] = evaluate(data, ood, det_out)
    fits["temperature"] = fit_temperature(data.y_val, det_out["val"]["mean"])
    write_with_temperature(det, folder / "det_t.onnx", fits["temperature"])
    rows["temperature"] = evaluate(
        data,
        ood,
        {
            s: {"mean": run_onnx(folder / "det_t.onnx", x, ["probabilities"])["probabilities"]}
            for s, x in splits.items()
        },
    )
    say(f"seed {seed}: MC Dropout, T = {T}")
    mc = folder / "mc.onnx"
    export_mc_onnx(model, mc, samples=T, seed=seed, include_samples=True)
    names = ["mean", "mutual_information", "sample_probabilities"]
    mc_out = {s: run_onnx(mc, x, names) for s, x in splits.items()}
    rows[f"mc (T={T})"] = evaluate(data, ood, mc_out)
    fits["mc+temperature"] = fit_mc_temperature(data.y_val, mc_out["val"]["sample_probabilities"])
    write_with_temperature(mc, folder / "mc_t.onnx", fits["mc+temperature"])
    rows["mc + temperature"] = evaluate(
        data, ood, {s: run_onnx(folder / "mc_t.onnx", x, names[:2]) for s, x in splits.items()}
    )
    say(f"seed {seed}: ensemble of {members} members (train, fold, prune, int8)")
    models = [model] + [chapter_model(data, seed * 100 + k) for k in range(1, members)]
    member_paths, original = optimize_members(
        deploykit.optimize, models, data, folder / "members", sparsity=0.8, keep_keras=True
    )
    ens = export_ensemble_onnx(member_paths, folder / "ensemble.onnx", include_members=True)
    names = ["mean", "mutual_information", MEMBERS_OUTPUT]
    ens_out = {s: run_onnx(ens.path, x, names) for s, x in splits.items()}
    rows[f"ensemble ({members} pruned int8)"] = evaluate(data, ood, ens_out)
    # One T per member (before the average) or on the mean: each alone, then the one the validation NLL prefers.
    for label, placements in (
        (" (on mean)", (Placement.MEAN,)),
        (" (per member)", (Placement.PER_SAMPLE,)),
        (" (validation choice)", (Placement.PER_SAMPLE, Placement.MEAN)),
    ):
        fits[f"ensemble+temperature{label}"] = fit = fit_mc_temperature(
            data.y_val, ens_out["val"][MEMBERS_OUTPUT], placements=placements
        )
        write_with_temperature(ens.path, folder / "ensemble_t.onnx", fit)
        rows[f"ensemble ({members}) + temperature{label}"] = evaluate(
            data, ood, {s: run_onnx(folder / "ensemble_t.onnx", x, names[:2]) for s, x in splits.items()}
        )
    say(f"seed {seed}: the same members with MC Dropout inside (T = {MEMBER_T} each)")
    mc_paths = [p.with_name(f"mc_{p.name}") for p in member_paths]
    for member, path in zip(member_paths, mc_paths):
        mc_member(member.with_suffix(".keras"), path, MEMBER_T, data)
    mc_ens = export_ensemble_onnx(mc_paths, folder / "ensemble_mc.onnx", include_members=True)
    label = f"ensemble ({members}, MC T={MEMBER_T} inside)"
    names = ["mean", "mutual_information", "sample_probabilities"]  # every member's every sample: [K*T, N, C]
    mc_ens_out = {s: run_onnx(mc_ens.path, x, names) for s, x in splits.items()}
    rows[label] = evaluate(data, ood, mc_ens_out)
    fits["ensemble+MC+temperature"] = fit = fit_mc_temperature(
        data.y_val, mc_ens_out["val"][names[2]], placements=(Placement.PER_SAMPLE, Placement.MEAN)
    )
    write_with_temperature(mc_ens.path, folder / "ensemble_mc_t.onnx", fit)
    rows[f"{label} + temperature (validation choice)"] = evaluate(
        data, ood, {s: run_onnx(folder / "ensemble_mc_t.onnx", x, names[:2]) for s, x in splits.items()}
    )
    return {
        "seed": seed,
        "rows": rows,
        "fits": {k: f.to_dict() for k, f in fits.items()},
        "sizes": ensemble_sizes(member_paths, ens.path, original).to_dict(),
        "sizes_mc": ensemble_sizes(mc_paths, mc_ens.path, original).to_dict(),
    }


# --- speed of the MC call --------------------------------------------------------------------------


def mc_speed(data, folder: Path) -> dict:
    """One MC call (T = 100, one row) with pooled and with plain Dropout masks, the deterministic model on
    T rows and the chapter's Keras loop (T calls of ``model(x, training=True)``), all in this process; and the
    same pooled MC model and deterministic model int8-dynamic (prepared on the data as every int8 export),
    with the test accuracy of each MC model."""
    import onnxruntime as ort

    from deploykit.export import export_onnx
    from deploykit.export.convert import keras_to_onnx
    from deploykit.uncertainty import MCConfig, UncertaintyPredictor, export_mc_onnx
    from deploykit.uncertainty.masks import MaskKind

    model = chapter_model(data, 1)
    paths = {}
    for mask in (MaskKind.POOL, MaskKind.DROPOUT):
        paths[mask.value] = folder / f"speed_{mask.value}.onnx"
        export_mc_onnx(model, paths[mask.value], config=MCConfig(samples=T, seed=7, mask=mask))
    paths["pool_int8"] = folder / "speed_pool_int8.onnx"
    export_mc_onnx(
        model,
        paths["pool_int8"],
        config=MCConfig(samples=T, seed=7, mask=MaskKind.POOL),
        quantization="int8-dynamic",
        calibration=data,
    )
    det = keras_to_onnx(model).SerializeToString()
    det_int8 = export_onnx(model, folder / "det_int8.onnx", quantization="int8-dynamic", calibration_data=data).path
    one = data.x_test[:1]
    rows = np.repeat(one, T, axis=0)
    result = {
        "samples": T,
        "sizes_bytes": {m: p.stat().st_size for m, p in paths.items()},
        "threads": {},
        "mc_accuracy": {
            m: float(
                np.mean(UncertaintyPredictor(p).predict(data.x_test, batch_size=64).predicted_class == data.y_test)
            )
            for m, p in paths.items()
        },
    }
    result["sizes_bytes"]["deterministic"] = len(det)
    for label, threads in (("1 thread", 1), ("default threads", None)):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        s_det = ort.InferenceSession(det, options, providers=["CPUExecutionProvider"])
        s_int8 = ort.InferenceSession(str(det_int8), options, providers=["CPUExecutionProvider"])
        calls = {
            "deterministic": lambda s=s_det: s.run(None, {"input": rows}),
            "deterministic_int8": lambda s=s_int8: s.run(None, {"input": rows}),
        }
        for mask, path in paths.items():
            sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            calls[f"mc_{mask}"] = lambda s=sess: s.run(["mean"], {"input": one})
        ms = {k: v * 1e3 for k, v in interleaved_medians(calls, 300).items()}
        ratios = {f"{k}_vs_deterministic": v / ms["deterministic"] for k, v in ms.items() if k.startswith("mc_")}
        ratios["mc_pool_int8_vs_deterministic_int8"] = ms["mc_pool_int8"] / ms["deterministic_int8"]
        result["threads"][label] = {"ms": ms, **ratios}
    keras_loop = lambda: [model(one, training=True) for _ in range(T)]  # noqa: E731  (the chapter's loop)
    result["keras_loop_ms"] = interleaved_medians({"keras": keras_loop}, 7, warmup=1)["keras"] * 1e3
    for row in result["threads"].values():
        row.update(
            {f"keras_loop_vs_{k}": result["keras_loop_ms"] / v for k, v in row["ms"].items() if k.startswith("mc_")}
        )
    return result


def speed_markdown(k: dict) -> list[str]:
    lines = [
        f"MC call speed (T = {k['samples']}, one row; chapter's model; the same process and run): chapter's Keras loop "
        f"{k['keras_loop_ms']:.1f} ms. Model sizes: "
        + ", ".join(f"{n} {b / 1e6:.2f} MB" for n, b in k["sizes_bytes"].items())
        + ".",
        "",
        "| onnxruntime | deterministic on T rows (ms) | MC, pooled masks (ms) | MC, ONNX Dropout (ms) | "
        "pooled / deterministic (target <= 1.5x) | Dropout / deterministic | Keras loop / pooled (target >= 1000x) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in k["threads"].items():
        ms = r["ms"]
        lines.append(
            f"| {label} | {ms['deterministic']:.3f} | {ms['mc_pool']:.3f} | {ms['mc_dropout']:.3f} | "
            f"{r['mc_pool_vs_deterministic']:.2f}x | {r['mc_dropout_vs_deterministic']:.2f}x | "
            f"{r['keras_loop_vs_mc_pool']:.0f}x |"
        )
    if "deterministic_int8" in next(iter(k["threads"].values()))["ms"]:
        acc = k["mc_accuracy"]
        lines += [
            "",
            "The same, int8-dynamic (MC test accuracy: float32 pooled "
            f"{acc['pool']:.4f}, int8 pooled {acc['pool_int8']:.4f}, ONNX Dropout {acc['dropout']:.4f}):",
            "",
            "| onnxruntime | int8 deterministic on T rows (ms) | int8 MC, pooled masks (ms) | int8 MC / int8 "
            "deterministic "
            "| int8 MC / float32 deterministic | Keras loop / int8 MC |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label, r in k["threads"].items():
            ms = r["ms"]
            lines.append(
                f"| {label} | {ms['deterministic_int8']:.3f} | {ms['mc_pool_int8']:.3f} | "
                f"{r['mc_pool_int8_vs_deterministic_int8']:.2f}x | {r['mc_pool_int8_vs_deterministic']:.2f}x | "
                f"{r['keras_loop_vs_mc_pool_int8']:.0f}x |"
            )
    return lines + [""]


# --- summary --------------------------------------------------------------------------------------


def mean_rows(runs: list[dict]) -> dict:
    """Every numeric figure averaged over the trainings (same nesting as one run's rows)."""

    def avg(values):
        if isinstance(values[0], dict):
            return {k: avg([v[k] for v in values]) for k in values[0]}
        if values[0] is None or isinstance(values[0], str):
            return values[0]
        return float(np.nanmean(values))

    return avg([r["rows"] for r in runs])


def wins_markdown(runs: list[dict], reference: str = "temperature", ece_bound: float = 0.03) -> list[str]:
    """Training by training, how often each method beats temperature scaling (the issue's reference): the
    means above differ by less than the spread between trainings, so the count says how settled each claim is."""
    n = len(runs)
    lines = [
        f"Per training (of {n}), against {reference} of the same training: lower NLL, higher OOD AUROC "
        f"(entropy), ECE at most {reference}'s or <= {ece_bound}:",
        "",
        "| method | lower NLL | higher OOD AUROC | ECE within | all three |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in runs[0]["rows"]:
        if name == reference:
            continue
        wins = []
        for run in runs:
            r, ref = run["rows"][name], run["rows"][reference]
            wins.append(
                (
                    r["nll"] < ref["nll"],
                    r["ood"]["entropy"]["auroc"] > ref["ood"]["entropy"]["auroc"],
                    r["ece"] <= max(ref["ece"], ece_bound),
                )
            )
        counts = [sum(w[k] for w in wins) for k in range(3)] + [sum(all(w) for w in wins)]
        lines.append(f"| {name} | " + " | ".join(f"{c}/{n}" for c in counts) + " |")
    return lines


def to_markdown(result: dict) -> str:
    m, runs = result["mean"], result["runs"]
    lines = [
        f"# Uncertainty on the Fashion-MNIST sample: mean of {len(runs)} trainings (seeds {result['seeds']})",
        "",
        f"{result['data']}; OOD: scikit-learn digits upsampled to 28x28 ({result['ood_rows']} images).",
        "",
        "| method | accuracy | NLL | ECE (15 bins) ± SE | Brier | AUROC errors by entropy | OOD AUROC entropy "
        "| OOD AUROC max prob | OOD AUROC MI | FPR@95 entropy | coverage at 99% (entropy) | coverage at 99% (MI) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in m.items():
        mi = r["ood"].get("mutual_information", {}).get("auroc")
        cov_mi = r["coverage_at_target"].get("mutual_information", {}).get("test_coverage")
        # SE of the mean over the trainings, from each training's bootstrap SE (test rows resampled)
        ses = [run["rows"][name].get("ece_se") for run in runs if name in run["rows"]]
        se = f" ± {np.sqrt(np.sum(np.square(ses))) / len(ses):.4f}" if ses and None not in ses else ""
        lines.append(
            f"| {name} | {r['accuracy']:.4f} | {r['nll']:.4f} | {r['ece']:.4f}{se} | {r['brier']:.4f} | "
            f"{r['auroc_errors_entropy']:.3f} | {r['ood']['entropy']['auroc']:.3f} | "
            f"{r['ood']['max_prob']['auroc']:.3f} | "
            f"{'' if mi is None else f'{mi:.3f}'} | {r['ood']['entropy']['fpr_at_95_tpr']:.3f} | "
            f"{r['coverage_at_target']['entropy']['test_coverage']:.3f} | {'' if cov_mi is None else f'{cov_mi:.3f}'} |"
        )
    lines += [""] + wins_markdown(runs)
    s = runs[0]["sizes"]
    lines += [
        "",
        "Temperatures fitted on the validation split, per training: "
        + "; ".join(
            ", ".join(f"{k} T={v['temperature']:.3f} ({v['placement']})" for k, v in r["fits"].items()) for r in runs
        ),
        "",
        f"Ensemble size (seed {runs[0]['seed']}): {s['members']} pruned int8 members {s['members_gzip']} B gzip, "
        f"ensemble ONNX {s['ensemble_gzip']} B gzip, one float32 original (.keras) {s['original_gzip']} B gzip: "
        f"ratio {s['ensemble_gzip'] / s['original_gzip']:.2f}x.",
    ]
    if "sizes_mc" in runs[0]:
        s = runs[0]["sizes_mc"]
        lines.append(
            f"With MC Dropout inside each member: ensemble ONNX {s['ensemble_gzip']} B gzip, "
            f"ratio {s['ensemble_gzip'] / s['original_gzip']:.2f}x."
        )
    lines.append("")
    if result.get("speed"):
        lines += speed_markdown(result["speed"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="one training per seed (default: 0,1,2)")
    parser.add_argument("--members", type=int, default=5, help="ensemble members per training (default: 5)")
    parser.add_argument("--no-speed", action="store_true", help="skip the MC call timing")
    parser.add_argument(
        "--render",
        action="store_true",
        help="rewrite results/uncertainty.md from the existing results/uncertainty.json",
    )
    parser.add_argument(
        "--only-speed",
        action="store_true",
        help="re-measure only the MC call timing, into the existing results/uncertainty.json",
    )
    args = parser.parse_args(argv)
    if not FASHION.exists():
        print(f"skipped: the Fashion-MNIST sample {FASHION.name} is not at {FASHION.parent}", file=sys.stderr)
        return 0
    import deploykit

    data = deploykit.load_dataset(FASHION)
    if args.render:
        import json

        from common import RESULTS

        result = json.loads((RESULTS / "uncertainty.json").read_text())
        write_results("uncertainty", result, to_markdown(result))
        return 0
    if args.only_speed:
        import json

        from common import RESULTS

        result = json.loads((RESULTS / "uncertainty.json").read_text())
        result.pop("masks", None)  # the bit-trick prototype's timing, replaced by the pooled masks
        with tempfile.TemporaryDirectory() as tmp:
            result["speed"] = mc_speed(data, Path(tmp))
        write_results("uncertainty", result, to_markdown(result))
        return 0
    ood = digits_ood(data.input_shape, len(data.x_test))  # as many OOD rows as test rows (MC at T = 100 is the cost)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            folder = Path(tmp) / f"seed{seed}"
            folder.mkdir()
            start = time.monotonic()
            runs.append(one_training(data, ood, seed, args.members, folder))
            runs[-1]["seconds"] = round(time.monotonic() - start, 1)
        result = {
            "data": data.summary(),
            "ood_rows": len(ood),
            "seeds": seeds,
            "samples": T,
            "members": args.members,
            "target_accuracy": TARGET_ACCURACY,
            "mean": mean_rows(runs),
            "runs": runs,
        }
        if not args.no_speed:
            say("MC call timing")
            result["speed"] = mc_speed(data, Path(tmp))
    write_results("uncertainty", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
