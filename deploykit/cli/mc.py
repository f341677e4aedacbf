"""``deploykit mc``: export the MC Dropout ONNX model and compare it with the deterministic model.

A thin layer over :func:`deploykit.uncertainty.bundle.mc_bundle` (the ``optimize`` pipeline's MC
step calls the same function): flags in, files and one summary line out.
"""

from __future__ import annotations

from deploykit.cli.common import add_command, add_data_arg, add_model_arg, load_data_arg, load_model_arg, progress

MODEL_FILE = "model_mc.onnx"
JSON_FILE = "comparison.json"
MARKDOWN_FILE = "comparison.md"


def register(sub) -> None:
    p = add_command(
        sub,
        "mc",
        _run,
        help="export the MC Dropout ONNX model and compare deterministic vs MC predictions",
        description=f"Export MODEL as an MC Dropout ONNX model ({MODEL_FILE}) with a temperature fitted on the "
        f"validation split (unless --no-temperature) and, with --target-accuracy / --target-coverage, an `abstain` "
        f"output; write, for the test split, deterministic vs MC accuracy, NLL, Brier, ECE, the error rate of the "
        f"most uncertain 10%, calibration before/after the temperature, the selective coverage and, with --ood-data, "
        f"OOD AUROC and FPR at 95% TPR ({JSON_FILE}, {MARKDOWN_FILE}) and the PNG plots into --out. A regressor's "
        f"model outputs mean and std per target; its report gives RMSE, Gaussian NLL and the 90% / 95% interval "
        f"coverage, with a std scale in place of the temperature and --target-rmse for the `abstain` output.",
    )
    add_model_arg(p)
    add_data_arg(p)
    p.add_argument("--samples", type=int, default=30, help="default number of dropout samples T (default: 30)")
    p.add_argument("--max-samples", type=int, default=1000, help="largest T a client may request (default: 1000)")
    p.add_argument(
        "--mc-seed",
        type=int,
        default=None,
        help="seed of the dropout draws: every new session then repeats the same sequence (default: none)",
    )
    p.add_argument(
        "--include-samples",
        action="store_true",
        help="also output the raw [T, N, C] sample probabilities (a regressor: sample_predictions [T, N, K])",
    )
    add_mask_option(p)
    add_uncertainty_options(p, regression=True)
    p.add_argument("--batch-size", type=int, default=256, help="instances per onnxruntime call (default: 256)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")


def add_mask_option(p) -> None:
    """--mask (shared with ``optimize``): how the MC graph draws its dropout masks."""
    p.add_argument(
        "--mask",
        choices=["auto", "pool", "dropout"],
        default=None,
        help="how each dropout mask is drawn: `pool` a window of a table drawn at export, at a random offset "
        "per row (fast; 4096 distinct masks per layer; ~131 KB per dropout layer); `dropout` ONNX Dropout, one "
        "draw per element; `auto` (default) pool when the tables cost at most half the model's weights",
    )


def add_uncertainty_options(p, regression: bool = False, point_estimate: bool = True) -> None:
    """--no-temperature, --target-accuracy / --target-coverage, --target-delta, --ood-data and the conformal options
    (shared with ``optimize``); ``regression``: --target-rmse too (a regressor's selective target);
    ``point_estimate``: --point-estimate too (not in ``optimize``, whose config records target_delta only)."""
    p.add_argument(
        "--no-temperature",
        action="store_true",
        help="do not fit and store a temperature (a regressor: the std scale) (default: fitted on the "
        "validation split, stored in the graph)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        metavar="A",
        help="add an `abstain` output: the predictive-entropy threshold keeping the most validation "
        "rows whose accuracy reaches A (e.g. 0.99)",
    )
    group.add_argument(
        "--target-coverage",
        type=float,
        default=None,
        metavar="C",
        help="add an `abstain` output keeping at least this share C of the validation rows",
    )
    if regression:
        group.add_argument(
            "--target-rmse",
            type=float,
            default=None,
            metavar="E",
            help="regression: add an `abstain` output, the 95%% interval-width threshold keeping the most "
            "validation rows whose RMSE is at most E (targets' units)",
        )
    p.add_argument(
        "--target-delta",
        type=float,
        default=None,
        metavar="D",
        help="with --target-accuracy / --target-rmse: the risk D that the target misses on unseen data; the "
        "threshold is chosen with a finite-sample bound (Clopper-Pearson, SGR) so it holds with probability "
        ">= 1 - D (default: 0.1); 0 < D < 1",
    )
    if point_estimate:
        p.add_argument(
            "--point-estimate",
            action="store_true",
            help="choose the abstain threshold on the validation figure alone (no bound: the target then "
            "misses on unseen data about half the time)",
        )
    p.add_argument(
        "--ood-data",
        default=None,
        metavar="PATH",
        help="out-of-distribution inputs (.npy, or .npz with an array x): report AUROC and FPR at 95%% TPR "
        "of each uncertainty measure",
    )
    add_conformal_options(p)


def add_conformal_options(p) -> None:
    """--conformal, --conformal-method, --conformal-by-class (shared with ``ensemble``, ``optimize``, ``export``)."""
    p.add_argument(
        "--conformal",
        type=float,
        default=None,
        metavar="COVERAGE",
        help="add split-conformal outputs calibrated on the validation split at this coverage 1 - alpha "
        "(e.g. 0.9): prediction_set (bool [N, classes]) and set_size; a regressor: lower / upper "
        "[N, targets]",
    )
    p.add_argument(
        "--conformal-method",
        choices=["raps", "aps", "lac"],
        default=None,
        help="the classification score: raps (default; its lambda chosen on a fifth of the validation "
        "rows), aps (non-randomized), or lac (1 - p, smallest sets, may be empty)",
    )
    p.add_argument(
        "--conformal-by-class",
        action="store_true",
        help="one threshold per class (Mondrian): the coverage holds for every class; refused when a class "
        "has too few validation rows",
    )


def conformal_config(args):
    """The ConformalConfig the flags ask for (None: no conformal outputs); a bad value is a ConfigError."""
    from deploykit.errors import UsageError

    coverage = getattr(args, "conformal", None)
    if coverage is None:
        if args.conformal_method or args.conformal_by_class:
            raise UsageError("--conformal-method and --conformal-by-class need --conformal COVERAGE")
        return None
    from deploykit.uncertainty.conformal import ConformalConfig

    return ConformalConfig(
        coverage,
        **({"method": args.conformal_method} if args.conformal_method else {}),
        by_class=args.conformal_by_class,
    )


def selective_target(args):
    """The SelectiveTarget the flags ask for (None: no abstain output); a bad value is a ConfigError."""
    from deploykit.uncertainty import SelectiveTarget

    rmse = getattr(args, "target_rmse", None)
    if args.target_accuracy is None and args.target_coverage is None and rmse is None:
        return None
    return SelectiveTarget(
        target_accuracy=args.target_accuracy,
        target_coverage=args.target_coverage,
        target_rmse=rmse,
        target_delta=target_delta(args),
    )


def target_delta(args):
    """--target-delta / --point-estimate as the SelectiveTarget's target_delta (None: the point rule)."""
    from deploykit.errors import UsageError
    from deploykit.uncertainty.selective import DEFAULT_DELTA

    point = getattr(args, "point_estimate", False)
    if point and args.target_delta is not None:
        raise UsageError("--target-delta and --point-estimate contradict each other: give one")
    return None if point else (DEFAULT_DELTA if args.target_delta is None else args.target_delta)


def _run(args) -> int:
    import json
    from pathlib import Path

    from deploykit.atomic import atomic_dir, write_text
    from deploykit.errors import UsageError
    from deploykit.uncertainty import MaskKind, MCConfig
    from deploykit.uncertainty.bundle import mc_bundle
    from deploykit.uncertainty.ood import load_ood

    config = MCConfig(
        samples=args.samples,
        max_samples=args.max_samples,
        seed=args.mc_seed,
        include_samples=args.include_samples,
        **({"mask": MaskKind(args.mask)} if args.mask else {}),
    )  # refuse bad options before any work
    target = selective_target(args)
    conformal = conformal_config(args)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    ood = load_ood(args.ood_data) if args.ood_data else None
    out = Path(args.out)
    with atomic_dir(out, force=args.force) as staging:  # an existing --out is refused before any work
        model = load_model_arg(args)
        data = load_data_arg(args, model)
        data.check_model(model)
        bundle = mc_bundle(
            model,
            data,
            staging / MODEL_FILE,
            config,
            temperature=not args.no_temperature,
            target=target,
            ood=ood,
            conformal=conformal,
            batch_size=args.batch_size,
            say=progress,
        )
        report = bundle.comparison
        exported = {**bundle.export.to_dict(), "path": str(out / MODEL_FILE)}
        summary = {"model": str(args.model), "data": data.summary(), "export": exported, "comparison": report.to_dict()}
        summary = json.loads(json.dumps(summary, default=str).replace(f"{staging}/", f"{out}/"))
        write_text(staging / JSON_FILE, json.dumps(summary, indent=2) + "\n")
        write_text(staging / MARKDOWN_FILE, report.to_markdown())
    if hasattr(report, "std_scale"):  # a regressor
        _print_regression(report, config)
    else:
        _print_classification(report, config)
    print(f"wrote {out / MODEL_FILE}, {JSON_FILE}, {MARKDOWN_FILE}{''.join(', ' + p for p in report.plots)} in {out}")
    return 0


def _print_regression(report, config) -> None:
    m = report.mc
    print(
        f"RMSE {report.deterministic_rmse:.4g} -> {m.rmse:.4g} (deterministic -> MC, T = {config.samples}"
        + (f", std scale {report.std_scale.fit.std_scale:.3f})" if report.std_scale else ", no std scale)")
        + f"; Gaussian NLL {m.nll:.4f}, 90% interval coverage {m.coverage_90:.1%}, "
        f"95% interval coverage {m.coverage_95:.1%}"
    )
    if report.selective:
        test = report.selective.test
        print(
            f"abstain when {report.selective.chosen.measure.value} > {report.selective.chosen.threshold:.4g}: "
            f"test coverage {test.coverage:.1%}, RMSE of kept {test.rmse:.4g}"
        )
    if report.conformal:
        t = report.conformal.test
        print(
            f"conformal intervals at {report.conformal.calibration.coverage:.0%}: test coverage {t.coverage:.1%}, "
            f"mean width {t.mean_width:.4g}"
        )


def _print_classification(report, config) -> None:
    d, m = report.deterministic, report.mc
    print(
        f"accuracy {d.accuracy:.4f} -> {m.accuracy:.4f}, NLL {d.nll:.4f} -> {m.nll:.4f}, "
        f"ECE {d.ece:.4f} -> {m.ece:.4f} (deterministic -> MC, T = {config.samples}"
        + (f", temperature {report.temperature.fit.temperature:.3f})" if report.temperature else ", no temperature)")
    )
    if report.selective:
        chosen = report.selective.chosen
        bound = ""
        if chosen.bound is not None:
            level = f"{1 - chosen.target.target_delta:.0%}"
            bound = (
                " (no cut's bound reaches the target: abstains on every row)"
                if chosen.bound != chosen.bound
                else f" (validation: accuracy {chosen.accuracy:.1%}, lower bound {chosen.bound:.1%} at {level})"
            )
        print(
            f"abstain when {chosen.measure.value} > {chosen.threshold:.4g}: "
            f"test coverage {report.selective.test.coverage:.1%}{bound}"
        )
    if report.conformal:
        t = report.conformal.test
        print(
            f"prediction sets at {report.conformal.calibration.coverage:.0%}: test coverage {t.coverage:.1%}, "
            f"mean set size {t.mean_set_size:.2f}"
        )
