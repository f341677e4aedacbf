"""Conformal prediction sets and guaranteed abstention (issue 24) against MAPIE, on the same scores and splits.

Models: the chapter's MC Dropout model (``../shared/models/book_fashion_bn_dropout.keras``, else the chapter's
architecture trained here) exported by ``export_mc_onnx`` (T = 30), and a deep ensemble of ``--members``
trainings of the chapter's architecture (float32 members, ``export_ensemble_onnx``; ``--members 0``: none).
Each model predicts the rows the models never trained on (the default split's validation and test rows:
the pool) once; ``--splits`` random halvings of the pool into calibration / test rows then give, per split:

- marginal coverage and mean set size of deploykit's RAPS, APS (non-randomized) and LAC at alpha = 0.1 and
  0.05, and of MAPIE 1.x's ``SplitConformalClassifier`` with the same score on the same probabilities (APS:
  MAPIE's default ``include_last_label=True`` and its randomized version) - target: coverage averaged over
  the splits in [1 - alpha, 1 - alpha + 1/(n+1) + 0.01], mean set size no larger than MAPIE's;
- ``conformal_by_class``: every class's coverage (target >= 1 - alpha - 0.03 on average over the splits);
- abstention at a 95% target accuracy (predictive entropy, ``target_delta`` 0.1, SGR + Clopper-Pearson):
  the test split's kept accuracy (target: >= 95% in at least 90% of the splits), beside the point rule;

plus the latency added to one MC call (one row, T = 30) by the set outputs (target <= 5%), and, on split 0,
the graph's ``prediction_set`` against the numpy sets on the same call's mean.

The guarantee is on the expectation over calibration draws: an exact method's coverage averaged over 20
halvings of one pool scatters around 1 - alpha + ~1/(2n) with a standard error of ~0.003, so the band's
lower edge is missed by chance about a third of the time. ``--many`` more halvings (deploykit's methods
alone: MAPIE is the slow part) show where the average converges, with its standard error.

Run: ``nice python benchmarks/bench_conformal.py`` (``pip install deploykit[bench]`` for MAPIE).
Writes ``benchmarks/results/conformal.json`` and ``conformal.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import FASHION, ROOT, write_results  # noqa: E402  (puts the repository on sys.path)

T = 30
ALPHAS = (0.1, 0.05)
METHODS = ("raps", "aps", "lac")
TARGET_ACCURACY = 0.95
BOOK_MODEL = ROOT.parent / "shared" / "models" / "book_fashion_bn_dropout.keras"
T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


class _Fixed:
    """A fitted scikit-learn classifier whose X is row indices into precomputed probabilities: MAPIE then
    conformalizes exactly the scores deploykit does."""

    _estimator_type = "classifier"

    def __init__(self, probs: np.ndarray):
        self.probs = probs
        self.classes_ = np.arange(probs.shape[1])
        self.n_features_in_ = 1
        self.fitted_ = True

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def __sklearn_tags__(self):
        from sklearn.base import BaseEstimator, ClassifierMixin

        return type("C", (ClassifierMixin, BaseEstimator), {})().__sklearn_tags__()

    def get_params(self, deep=True):
        return {"probs": self.probs}

    def fit(self, x, y):
        return self

    def predict_proba(self, x):
        return self.probs[np.asarray(x, np.int64)[:, 0]]

    def predict(self, x):
        return self.predict_proba(x).argmax(1)


def mapie_sets(probs, cal, test, y, alpha: float, method: str, seed: int, randomized: bool = False) -> np.ndarray:
    from mapie.classification import SplitConformalClassifier

    mapie = SplitConformalClassifier(
        _Fixed(probs), confidence_level=1 - alpha, conformity_score=method, prefit=True, random_state=seed
    )
    mapie.conformalize(cal[:, None], y[cal])
    params = {"include_last_label": "randomized"} if randomized else None
    _, sets = mapie.predict_set(test[:, None], conformity_score_params=params)
    return sets[:, :, 0]


def one_split(probs, entropy, y, seed: int) -> dict:
    """Every figure of one calibration / test halving of the pool."""
    from deploykit.uncertainty.conformal import ConformalConfig, calibrate_classifier, evaluate_sets, prediction_sets
    from deploykit.uncertainty.measures import Measure
    from deploykit.uncertainty.selective import SelectiveTarget, apply_threshold, choose_threshold

    order = np.random.default_rng(1000 + seed).permutation(len(y))
    cal, test = order[: len(y) // 2], order[len(y) // 2 :]
    row = {"alphas": {}}
    for alpha in ALPHAS:
        by_alpha = row["alphas"][str(alpha)] = {}
        for method in METHODS:
            conformal = calibrate_classifier(y[cal], probs[cal], ConformalConfig(1 - alpha, method, seed=seed))
            ours = evaluate_sets(y[test], prediction_sets(probs[test], conformal))
            theirs = evaluate_sets(y[test], mapie_sets(probs, cal, test, y, alpha, method, seed))
            by_alpha[method] = {
                "n": conformal.count,
                "coverage": ours.coverage,
                "size": ours.mean_set_size,
                "mapie_coverage": theirs.coverage,
                "mapie_size": theirs.mean_set_size,
                "lambda": conformal.lam,
                "k_reg": conformal.k_reg,
            }
            if method == "aps":
                randomized = evaluate_sets(y[test], mapie_sets(probs, cal, test, y, alpha, method, seed, True))
                by_alpha[method] |= {
                    "mapie_randomized_coverage": randomized.coverage,
                    "mapie_randomized_size": randomized.mean_set_size,
                }
        mondrian = calibrate_classifier(y[cal], probs[cal], ConformalConfig(1 - alpha, "aps", by_class=True))
        result = evaluate_sets(y[test], prediction_sets(probs[test], mondrian))
        by_alpha["by_class"] = {
            "coverage": result.coverage,
            "size": result.mean_set_size,
            "per_class": [c.coverage for c in result.per_class],
        }
    predicted = probs.argmax(1)
    for rule, delta in (("bound", 0.1), ("point", None)):
        chosen = choose_threshold(
            y[cal],
            predicted[cal],
            entropy[cal],
            Measure.ENTROPY,
            SelectiveTarget(target_accuracy=TARGET_ACCURACY, target_delta=delta),
        )
        kept = apply_threshold(y[test], predicted[test], entropy[test], chosen.threshold)
        row[f"abstain_{rule}"] = {
            "val_coverage": chosen.coverage,
            "val_accuracy": chosen.accuracy,
            "bound": chosen.bound,
            "test_coverage": kept.coverage,
            "test_accuracy": kept.accuracy,
        }
    return row


def many_splits(probs, y, count: int) -> dict:
    """deploykit's marginal coverage averaged over ``count`` halvings, with its standard error (no MAPIE)."""
    from deploykit.uncertainty.conformal import ConformalConfig, calibrate_classifier, prediction_sets

    found = {str(a): {m: [] for m in METHODS} for a in ALPHAS}
    for seed in range(count):
        order = np.random.default_rng(50_000 + seed).permutation(len(y))
        cal, test = order[: len(y) // 2], order[len(y) // 2 :]
        for alpha in ALPHAS:
            for method in METHODS:
                conformal = calibrate_classifier(y[cal], probs[cal], ConformalConfig(1 - alpha, method, seed=seed))
                found[str(alpha)][method].append(
                    prediction_sets(probs[test], conformal)[np.arange(len(test)), y[test]].mean()
                )
    return {
        a: {
            m: {"splits": count, "coverage": float(np.mean(v)), "se": float(np.std(v) / np.sqrt(len(v)))}
            for m, v in rows.items()
        }
        for a, rows in found.items()
    }


def summarize(splits: list[dict]) -> dict:
    """Averages over the splits and each target's verdict."""
    out = {"alphas": {}}
    for alpha in ALPHAS:
        a = str(alpha)
        rows = {}
        for method in METHODS:
            per = [s["alphas"][a][method] for s in splits]
            n = int(np.mean([p["n"] for p in per]))
            cov, size = float(np.mean([p["coverage"] for p in per])), float(np.mean([p["size"] for p in per]))
            mcov = float(np.mean([p["mapie_coverage"] for p in per]))
            msize = float(np.mean([p["mapie_size"] for p in per]))
            high = 1 - alpha + 1 / (n + 1) + 0.01
            se = float(np.std([p["coverage"] for p in per]) / np.sqrt(len(per)))
            rows[method] = {
                "n": n,
                "coverage": cov,
                "coverage_se": se,
                "size": size,
                "mapie_coverage": mcov,
                "mapie_size": msize,
                "size_ratio": size / msize,
                "coverage_band": [1 - alpha, high],
                "coverage_ok": 1 - alpha <= cov <= high,
                "size_ok": size <= msize + 1e-9,
            }
            if method == "aps":
                rows[method] |= {
                    k: float(np.mean([p[k] for p in per]))
                    for k in ("mapie_randomized_coverage", "mapie_randomized_size")
                }
        per_class = np.mean([s["alphas"][a]["by_class"]["per_class"] for s in splits], axis=0)
        rows["by_class"] = {
            "coverage": float(np.mean([s["alphas"][a]["by_class"]["coverage"] for s in splits])),
            "size": float(np.mean([s["alphas"][a]["by_class"]["size"] for s in splits])),
            "per_class": per_class.tolist(),
            "min_class": float(per_class.min()),
            "ok": bool(per_class.min() >= 1 - alpha - 0.03),
        }
        out["alphas"][a] = rows
    for rule in ("bound", "point"):
        acc = np.array([s[f"abstain_{rule}"]["test_accuracy"] for s in splits], np.float64)
        met = np.nan_to_num(acc, nan=1.0) >= TARGET_ACCURACY  # nothing kept: nothing wrong kept
        coverage = float(np.mean([s[f"abstain_{rule}"]["test_coverage"] for s in splits]))
        out[f"abstain_{rule}"] = {
            "share_met": float(met.mean()),
            "nothing_kept": int(np.isnan(acc).sum()),
            "test_coverage": coverage,
            "test_accuracy": float(np.nanmean(acc)),
            "ok": bool(met.mean() >= 0.9),
        }
    return out


# --- models --------------------------------------------------------------------------------------------------


def pool_outputs(path, x) -> dict:
    from deploykit.uncertainty import UncertaintyPredictor

    r = UncertaintyPredictor(path).predict(x, batch_size=128)
    return {"mean": r.mean.astype(np.float64), "entropy": r.predictive_entropy.astype(np.float64)}


def mc_model(data, folder: Path):
    from deploykit.io.models import load_model
    from deploykit.uncertainty import export_mc_onnx

    if BOOK_MODEL.exists():
        say(f"the chapter's MC model: {BOOK_MODEL.name}")
        model, source = load_model(BOOK_MODEL), BOOK_MODEL.name
    else:
        from bench_uncertainty import chapter_model

        say("../shared/models absent: training the chapter's architecture")
        model, source = chapter_model(data, 0), "chapter_model(seed 0)"
    path = folder / "mc.onnx"
    export_mc_onnx(model, path, samples=T, seed=0, class_names=list(data.class_names))
    return path, source


def ensemble_model(data, members: int, folder: Path):
    from bench_uncertainty import chapter_model

    from deploykit.export import export_onnx
    from deploykit.uncertainty.ensemble import export_ensemble_onnx

    paths = []
    for k in range(members):
        say(f"ensemble member {k + 1}/{members}: training the chapter's architecture")
        paths.append(folder / f"member{k}.onnx")
        export_onnx(chapter_model(data, 100 + k), paths[-1])
    return export_ensemble_onnx(paths, folder / "ensemble.onnx", class_names=list(data.class_names)).path


def graph_check(path: Path, probs_cal, y_cal, x_test, folder: Path) -> dict:
    """The MC graph's own prediction_set (one call) against numpy on that call's mean."""
    import onnx

    from deploykit.uncertainty import UncertaintyPredictor
    from deploykit.uncertainty.conformal import ConformalConfig, calibrate_classifier, prediction_sets
    from deploykit.uncertainty.conformal_graph import add_conformal

    conformal = calibrate_classifier(y_cal, probs_cal, ConformalConfig(0.9))
    proto = onnx.load(str(path))
    add_conformal(proto, conformal)
    onnx.save(proto, str(folder / "mc_sets.onnx"))
    r = UncertaintyPredictor(folder / "mc_sets.onnx").predict(x_test, batch_size=128)
    same = r.prediction_set == prediction_sets(r.mean, conformal)
    return {
        "rows": len(x_test),
        "equal_rows": float(same.all(axis=1).mean()),
        "set_size_equal": bool(np.array_equal(r.set_size, r.prediction_set.sum(1))),
    }


def latency(path: Path, probs_cal, y_cal, x, folder: Path, repeats: int) -> dict:
    """One MC call (one row, T samples): every output, without and with the conformal outputs."""
    import onnx
    import onnxruntime as ort

    from deploykit.export.runtimes import interleaved_medians
    from deploykit.uncertainty.conformal import ConformalConfig, calibrate_classifier
    from deploykit.uncertainty.conformal_graph import add_conformal

    proto = onnx.load(str(path))
    add_conformal(proto, calibrate_classifier(y_cal, probs_cal, ConformalConfig(0.9)))
    onnx.save(proto, str(folder / "mc_latency.onnx"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {
        name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        for name, p in (("mc", path), ("mc + sets", folder / "mc_latency.onnx"))
    }
    row = np.asarray(x[:1], np.float32)
    fns = {name: (lambda s=s: s.run(None, {"input": row})) for name, s in sessions.items()}
    medians = interleaved_medians(fns, repeats=repeats, warmup=20)
    return {
        "mc_ms": medians["mc"] * 1e3,
        "mc_sets_ms": medians["mc + sets"] * 1e3,
        "added": medians["mc + sets"] / medians["mc"] - 1,
        "ok": medians["mc + sets"] / medians["mc"] - 1 <= 0.05,
        "samples": T,
        "threads": 1,
        "repeats": repeats,
    }


# --- the report ---------------------------------------------------------------------------------------------


def verdicts(results: dict) -> list[str]:
    """The issue's targets, each counted over the models, alphas and methods it applies to."""
    rows = [
        (m, a, r)
        for m in results["models"].values()
        for a, by in m["summary"]["alphas"].items()
        for k, r in by.items()
        if k in METHODS
    ]
    many = [m["many"][a][k] for m in results["models"].values() for a in m["many"] for k in METHODS]
    band = [r["coverage_band"] for _, _, r in rows]
    in_many = sum(lo <= x["coverage"] <= hi for x, (lo, hi) in zip(many, band))
    classes = [by["by_class"]["ok"] for m in results["models"].values() for by in m["summary"]["alphas"].values()]
    abstain = [m["summary"]["abstain_bound"]["ok"] for m in results["models"].values()]
    lat = results.get("latency", {})
    return [
        "Targets:",
        "",
        f"- marginal coverage in [1 - alpha, 1 - alpha + 1/(n+1) + 0.01], averaged over {results['splits']} "
        f"splits: {sum(r['coverage_ok'] for _, _, r in rows)} of {len(rows)} (model x alpha x method); over "
        f"{results['many']} splits: {in_many} of {len(rows)}. The lower edge has no tolerance: an exact method "
        "averaged over 20 splits falls below it by chance (standard errors in the tables);",
        f"- mean set size no larger than MAPIE's on the same scores: {sum(r['size_ok'] for _, _, r in rows)} of "
        f"{len(rows)} (LAC is the same algorithm in both: equal sizes);",
        f"- per-class coverage >= 1 - alpha - 0.03 with `conformal_by_class`: {sum(classes)} of {len(classes)};",
        f"- abstention at a 95% target: kept accuracy >= 95% on test in >= 90% of splits: {sum(abstain)} of "
        f"{len(abstain)} models;",
        f"- latency added by the set outputs <= 5% of the MC call: {'yes' if lat.get('ok') else 'no'} "
        f"({lat.get('added', float('nan')):+.1%}).",
    ]


def markdown(results: dict) -> str:
    lines = [
        "# Conformal prediction sets and guaranteed abstention vs MAPIE (Fashion-MNIST sample)",
        "",
        f"{results['splits']} random calibration / test halvings of the {results['pool']} rows no model trained "
        "on "
        f"(the default split's validation and test rows). MAPIE {results['mapie_version']} "
        "`SplitConformalClassifier` is given the same probabilities. Command: "
        f"`{results['command']}`.",
        "",
        *verdicts(results),
        "",
    ]
    for name, model in results["models"].items():
        lines += [
            f"## {name}",
            "",
            f"Test accuracy of the pool: {model['pool_accuracy']:.4f}.",
            "",
            "| alpha | method | n | coverage ± SE (band) | mean set size | MAPIE coverage | MAPIE size "
            f"| size / MAPIE | ok | coverage over {results['many']} splits ± SE |",
            "|---:|---|---:|---|---:|---:|---:|---:|---|---|",
        ]
        s = model["summary"]
        for alpha, rows in s["alphas"].items():
            for method in METHODS:
                r = rows[method]
                lo, hi = r["coverage_band"]
                ok = "yes" if r["coverage_ok"] and r["size_ok"] else ("coverage" if not r["coverage_ok"] else "size")
                m = model["many"][alpha][method]
                inside = "in band" if lo <= m["coverage"] <= hi else "outside"
                lines.append(
                    f"| {alpha} | {method} | {r['n']} | {r['coverage']:.4f} ± {r['coverage_se']:.4f} "
                    f"([{lo:.3f}, {hi:.3f}]) | {r['size']:.3f} | {r['mapie_coverage']:.4f} | "
                    f"{r['mapie_size']:.3f} | {r['size_ratio']:.3f} | {ok} | {m['coverage']:.5f} ± "
                    f"{m['se']:.5f} ({inside}) |"
                )
        lines += [
            "",
            "MAPIE's randomized APS (a random set per call, which a graph without a random draw cannot "
            "serve) on the same splits: "
            + ", ".join(
                f"alpha {a}: coverage {rows['aps']['mapie_randomized_coverage']:.4f}, size "
                f"{rows['aps']['mapie_randomized_size']:.3f}"
                for a, rows in s["alphas"].items()
            )
            + ".",
            "",
            "| alpha | by class (APS, Mondrian): coverage | mean size | lowest class's coverage | target | ok |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for alpha, rows in s["alphas"].items():
            b = rows["by_class"]
            lines.append(
                f"| {alpha} | {b['coverage']:.4f} | {b['size']:.3f} | {b['min_class']:.4f} | "
                f">= {1 - float(alpha) - 0.03:.2f} | {'yes' if b['ok'] else 'no'} |"
            )
        lines += [
            "",
            f"| abstention at {TARGET_ACCURACY:.0%} target accuracy | splits meeting it on test "
            "(nothing kept) | "
            "mean test coverage | mean kept accuracy | target (>= 90% of splits) |",
            "|---|---:|---:|---:|---|",
        ]
        for rule, label in (
            ("bound", "bound (target_delta 0.1, SGR + Clopper-Pearson)"),
            ("point", "point rule (before)"),
        ):
            r = s[f"abstain_{rule}"]
            lines.append(
                f"| {label} | {r['share_met']:.0%} ({r['nothing_kept']}) | {r['test_coverage']:.2%} | "
                f"{r['test_accuracy']:.4f} | "
                f"{'yes' if r['ok'] else 'no'} |"
            )
        if "graph" in model:
            g = model["graph"]
            lines += [
                "",
                "Graph check (split 0, RAPS at 90%): the served `prediction_set` equals the numpy sets on "
                "the "
                f"same call's mean for {g['equal_rows']:.2%} of {g['rows']} rows; set_size = its row sums: "
                f"{g['set_size_equal']}.",
            ]
        lines.append("")
    lat = results.get("latency")
    if lat:
        lines += [
            "## Latency of the set outputs",
            "",
            f"One MC call (one row, T = {lat['samples']}, {lat['threads']} thread, median of {lat['repeats']}): "
            f"{lat['mc_ms']:.3f} ms without, {lat['mc_sets_ms']:.3f} ms with `prediction_set` / `set_size`: "
            f"**{lat['added']:+.1%}** (target <= +5%: {'yes' if lat['ok'] else 'no'}).",
            "",
        ]
    return "\n".join(lines)


def rewrite_markdown() -> None:
    """conformal.md again from conformal.json (the report's wording changed, the measurements did not)."""
    import json

    from common import RESULTS

    results = json.loads((RESULTS / "conformal.json").read_text())
    results["command"] = results["command"].strip()
    write_results("conformal", results, markdown(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--members", type=int, default=5, help="ensemble members to train (0: no ensemble)")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per model for the latency")
    parser.add_argument("--many", type=int, default=500, help="halvings for the converged coverage (no MAPIE)")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite conformal.md from conformal.json")
    args = parser.parse_args()
    if args.markdown_only:
        rewrite_markdown()
        return 0
    if not FASHION.exists():
        print(f"skipped: {FASHION} is absent (the Fashion-MNIST sample beside the project)", file=sys.stderr)
        return 0
    try:
        import mapie
    except ImportError:
        print("skipped: MAPIE is not installed (pip install 'deploykit[bench]')", file=sys.stderr)
        return 0

    from deploykit.data.dataset import load_dataset

    data = load_dataset(str(FASHION))
    x = np.concatenate([data.x_val, data.x_test]).astype(np.float32)
    y = np.concatenate([data.y_val, data.y_test]).astype(np.int64)
    results = {
        "splits": args.splits,
        "many": args.many,
        "pool": len(y),
        "mapie_version": mapie.__version__,
        "models": {},
        "command": " ".join(["nice python benchmarks/bench_conformal.py", *sys.argv[1:]]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path, source = mc_model(data, folder)
        say("MC predictions of the pool")
        models = {f"MC Dropout ({source}, T = {T})": (path, pool_outputs(path, x))}
        if args.members:
            ens = ensemble_model(data, args.members, folder)
            say("ensemble predictions of the pool")
            models[f"deep ensemble ({args.members} float32 members)"] = (ens, pool_outputs(ens, x))
        for name, (_, out) in models.items():
            say(f"{name}: {args.splits} splits")
            splits = [one_split(out["mean"], out["entropy"], y, s) for s in range(args.splits)]
            say(f"{name}: {args.many} more splits, deploykit only")
            results["models"][name] = {
                "pool_accuracy": float((out["mean"].argmax(1) == y).mean()),
                "summary": summarize(splits),
                "splits": splits,
                "many": many_splits(out["mean"], y, args.many),
            }
        order = np.random.default_rng(1000).permutation(len(y))
        cal, test = order[: len(y) // 2], order[len(y) // 2 :]
        first = next(iter(results["models"].values()))
        probs = models[next(iter(models))][1]["mean"]
        first["graph"] = graph_check(path, probs[cal], y[cal], x[test], folder)
        say("latency of the set outputs")
        results["latency"] = latency(path, probs[cal], y[cal], x, folder, args.repeats)
    write_results("conformal", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
