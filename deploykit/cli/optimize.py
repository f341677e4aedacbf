"""``deploykit optimize``: the whole pipeline, from a trained model to validated artifacts and a report."""

from __future__ import annotations

from deploykit.cli.common import DEFAULT_MODEL, add_command, add_data_arg, add_model_arg, data_source, progress
from deploykit.cli.export import (
    add_quantization_options,
    add_triton_options,
    add_variant_options,
    quantization_options,
    renamed_options,
    triton_options,
)
from deploykit.cli.mc import add_mask_option, add_uncertainty_options

DEFAULT_OUT = "deploykit-out"


def register(sub) -> None:
    p = add_command(
        sub,
        "optimize",
        _run,
        help="fold, prune, quantize, export and validate in one command, with a report",
        description="Prune (TF-MOT) or l1-sparsify, fold BatchNorm and the input standardization, remove dead "
        "neurons, export ONNX and TFLite at float32 / float16 / int8, build the MC Dropout ONNX model, validate "
        "every artifact in its runtime, and write report.md, report.json, PNG plots and the deploykit.toml that "
        "ran (repeat a run with --config OUT/deploykit.toml). Options given here override the --config file.",
    )
    add_model_arg(p, optional=True)
    add_data_arg(p)
    from deploykit.multi_io import NPZ_RULE

    p.epilog = NPZ_RULE + " (see the README, 'Data deploykit reads')."
    p.set_defaults(
        data=None, seed=None, label_column=None, class_names=None, task=None
    )  # unset: the --config file's [input], else digits and 42
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument(
        "--config", default=None, metavar="TOML", help="pipeline file (e.g. a previous run's OUT/deploykit.toml)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-fold", action="store_true", help="do not fold BatchNorm / the input standardization")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--sparsity",
        type=float,
        default=None,
        metavar="S",
        help="prune to this sparsity with TF-MOT, no search (default: the highest of 0.95/0.9/0.8/0.7/0.5 "
        "within the budget)",
    )
    group.add_argument(
        "--l1", type=float, default=None, metavar="L1", help="l1 sparsity with this factor instead of pruning"
    )
    group.add_argument("--no-sparsity", action="store_true", help="keep the weights dense")
    p.add_argument(
        "--threshold", type=float, default=None, help="l1: weights with |w| below it become 0 (default: 0.02)"
    )
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs of each sparsity try (default: 30)")
    p.add_argument(
        "--structured",
        type=float,
        default=None,
        metavar="F",
        help="first remove this share of each hidden layer's units and conv channels (structured pruning: "
        "fewer MACs, so faster in every runtime), kept when within the budget (default: 0, off)",
    )
    p.add_argument(
        "--quick", action="store_true", help="skip the sparsity search: prune once to [sparsity.prune] target_sparsity"
    )
    p.add_argument(
        "--no-distill",
        action="store_true",
        help="fine-tune on the labels only (default: distil from the original model)",
    )
    p.add_argument("--no-compact", action="store_true", help="do not remove dead neurons")
    add_variant_options(p, default_quantize="float32, float16, int8-dynamic, int8-full")
    p.add_argument("--no-export", action="store_true", help="write no ONNX / TFLite artifacts")
    add_quantization_options(p, defaults=False)
    add_triton_options(p, defaults=False)
    p.add_argument("--no-mc", action="store_true", help="do not build the MC Dropout ONNX model")
    p.add_argument("--samples", type=int, default=None, help="MC Dropout samples T (default: 30)")
    p.add_argument(
        "--mc-seed",
        type=int,
        default=None,
        help="seed of the MC model's draws: every new session repeats the same sequence (default: fresh draws)",
    )
    add_mask_option(p)
    add_uncertainty_options(p, regression=True, point_estimate=False)
    p.add_argument(
        "--ensemble-members",
        nargs="+",
        default=None,
        metavar="MODEL",
        help="other trained models (the same inputs and task): with this one, the members of a deep ensemble "
        "written as ensemble/ensemble.onnx, each through this run's sparsity and int8-dynamic export, "
        "calibrated and thresholded like the MC model (what `deploykit ensemble` builds)",
    )
    p.add_argument(
        "--ensemble-mc-samples",
        type=int,
        default=None,
        metavar="T",
        help="MC Dropout inside each ensemble member: T samples each (default: deterministic members)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=None,
        metavar="D",
        help="the accuracy budget: accuracy at most D below the original model's, for every kept model and "
        "shipped artifact, decided on the validation split and confirmed on the test split (a fraction: "
        "default 0.01 = one point); classifiers",
    )
    p.add_argument(
        "--max-rmse-increase",
        type=float,
        default=None,
        metavar="F",
        help="a regressor's budget: test RMSE at most this fraction above the original model's, for every kept "
        "model and shipped artifact (default 0.05 = 5%%)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit non-zero when any artifact was rejected (default: only when nothing deployable meets the budget)",
    )
    p.add_argument(
        "--no-validate", action="store_true", help="measure the artifacts but do not hold them to tolerances"
    )
    add_time_budget_option(p)
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run the sparsity search's tries as Ray tasks: on a local Ray without ADDRESS, else on the "
        'cluster at ADDRESS (e.g. 10.0.0.5:6379); the same kept try as serially (pip install "deploykit[ray]")',
    )


def add_time_budget_option(p) -> None:
    """``--time-budget MINUTES`` (``[search] time_budget``, ``time_budget=``), on optimize and ensemble."""
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MINUTES",
        help="finish within this many minutes (at most 10%% over): the run measures a fine-tuning epoch (and "
        "each kind of export as it goes) on this model, plans fewer or shorter sparsity tries, a cheaper "
        "sensitivity scan and the most wanted artifacts first, says its plan, stops a try at its deadline "
        "and ships what is within the accuracy budget by then (default: no bound; the plan line gives the "
        "estimated minutes)",
    )


def options_from_args(args) -> dict:
    """The flat pipeline options the flags set (None: not given)."""
    off = lambda flag: False if flag else None  # noqa: E731
    sparsity = "none" if args.no_sparsity else args.sparsity
    variants = renamed_options(args)
    return {
        "fold": off(args.no_fold),
        "sparsity": sparsity,
        "l1": args.l1,
        "threshold": args.threshold,
        "epochs": args.epochs,
        "compact": off(args.no_compact),
        "export": off(args.no_export),
        "formats": variants["formats"],
        "quantize": variants["quantize"],
        "triton": triton_options(args),
        "quantization": quantization_options(args) or None,
        "mc": off(args.no_mc),
        "samples": args.samples,
        "mc_seed": args.mc_seed,
        "mask": args.mask,
        "validate": off(args.no_validate),
        "temperature": off(args.no_temperature),
        "target_accuracy": args.target_accuracy,
        "target_coverage": args.target_coverage,
        "target_rmse": args.target_rmse,
        "target_delta": args.target_delta,
        "conformal": args.conformal,
        "conformal_method": args.conformal_method,
        "conformal_by_class": True if args.conformal_by_class else None,
        "ood_data": _resolved(args.ood_data),
        "quick": True if args.quick else None,
        "distill": off(args.no_distill),
        "max_accuracy_drop": args.max_accuracy_drop,
        "max_rmse_increase": args.max_rmse_increase,
        "strict": True if args.strict else None,
        "ensemble_members": None if args.ensemble_members is None else [_resolved(m) for m in args.ensemble_members],
        "ensemble_mc_samples": args.ensemble_mc_samples,
        "structured": args.structured,
        "time_budget": args.time_budget,
        "ray": args.ray,
    }


def _resolved(path: str | None) -> str | None:
    """A path as the run's deploykit.toml records it (absolute, so the run repeats from anywhere)."""
    from pathlib import Path

    return None if path is None else str(Path(path).resolve())


def _run(args) -> int:
    import sys
    from pathlib import Path

    from deploykit.pipeline import OptimizeConfig, optimize

    config = OptimizeConfig.from_toml(args.config) if args.config else OptimizeConfig()
    config = config.with_options(**options_from_args(args)).with_input(
        label_column=args.label_column, seed=args.seed, class_names=args.class_names, task=args.task
    )
    if config.input.ood_data:  # a bad OOD file fails before the run, not after its sparsity search
        from deploykit.uncertainty.ood import load_ood

        load_ood(config.input.ood_data)
    model = args.model or config.input.model or DEFAULT_MODEL
    # a --config file says its data; else --data, or digits for the shipped model only (data_source refuses
    # a user's model)
    data = config.input.data if args.config and args.data is None else data_source(args)
    result = optimize(
        model, data, config=config, out_dir=Path(args.out), force=args.force, progress=progress, unsafe=args.unsafe
    )
    print(result.table())
    print(
        f"\n{len(result.shipped)} artifacts shipped, {len(result.rejected)} rejected; report.md, report.json, plots "
        f"and deploykit.toml in {result.out_dir}"
    )
    if result.failure:
        print(f"deploykit optimize: {result.failure}", file=sys.stderr)
        return 1
    return 0
