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
    from deploykit.core.multi_io import NPZ_RULE

    p.epilog = NPZ_RULE + " (see the README, 'Data deploykit reads')."
    p.set_defaults(
        data=None, seed=None, label_column=None, class_names=None, task=None
    )  # unset: the --config file's [input], else digits and 42
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument(
        "--config", default=None, metavar="TOML", help="pipeline file (e.g. a previous run's OUT/deploykit.toml)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    add_options(p)


def add_options(p) -> None:
    """Every flat option of the pipeline as its flag: the registry's rows (:mod:`deploykit.pipeline.registry`), then
    the flag groups ``optimize`` shares with other commands (the rows marked ``shared`` are read from them)."""
    from deploykit.pipeline.registry import TABLES

    groups: dict = {}
    for spec in TABLES:
        for option in spec.options:
            option.add_to(p, groups, spec.default_of(option))
    add_variant_options(p, default_quantize="float32, float16, int8-dynamic, int8-full")
    add_quantization_options(p, defaults=False)
    add_triton_options(p, defaults=False)
    add_mask_option(p)
    add_uncertainty_options(p, regression=True, point_estimate=False)


def add_time_budget_option(p) -> None:
    """``--time-budget MINUTES`` on another command (``deploykit ensemble``): the registry's row, so one help."""
    from deploykit.pipeline.registry import OPTIONS_BY_NAME

    OPTIONS_BY_NAME["time_budget"].add_to(p, {})


def add_ray_option(p) -> None:
    """``--ray [ADDRESS]`` on another command (``deploykit ensemble``: its members as Ray tasks): the registry's
    row, so one help."""
    from deploykit.pipeline.registry import OPTIONS_BY_NAME

    OPTIONS_BY_NAME["ray"].add_to(p, {})


def options_from_args(args) -> dict:
    """The flat pipeline options the flags set (None: not given), one per registry row with a flag."""
    from deploykit.pipeline.options import Cli
    from deploykit.pipeline.registry import OPTIONS_BY_NAME

    variants = renamed_options(args)  # the shared groups that gather several flags into one option
    gathered = {
        "formats": variants["formats"],
        "quantize": variants["quantize"],
        "quantization": quantization_options(args) or None,
        "triton": triton_options(args),
    }
    return {
        name: gathered[name] if name in gathered else option.read(args)
        for name, option in OPTIONS_BY_NAME.items()
        if option.cli is not Cli.NONE
    }


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
    if result.fallback:
        print(f"fallback: {result.fallback['line']}")
    if result.failure:
        print(f"deploykit optimize: {result.failure}", file=sys.stderr)
        return 1
    return 0
