"""``deploykit prune``, ``deploykit sparsify-l1`` and ``deploykit compact``."""

from __future__ import annotations

from deploykit.cli.common import (
    add_command,
    add_data_arg,
    add_label_column_arg,
    add_model_arg,
    load_data_arg,
    load_model_arg,
    progress,
    writes_keras3,
)
from deploykit.errors import UsageError
from deploykit.sparsity.allocate import ALLOCATIONS

MODEL_SUFFIXES = (".keras", ".h5")


def register(sub) -> None:
    p = add_command(
        sub,
        "prune",
        _prune,
        "prune Dense and conv kernels to a target sparsity with TF-MOT while fine-tuning",
        "TF-MOT magnitude pruning of the Dense and conv layers (the output layer is left alone by default), "
        "with a PolynomialDecay schedule derived from the data size; the reached sparsity is checked.",
    )
    add_model_arg(p)
    add_data_arg(p)
    p.add_argument("--sparsity", type=float, default=0.8, help="target sparsity in [0, 1) (default: 0.8)")
    p.add_argument("--block", default=None, metavar="RxC", help="block sparsity, e.g. 1x4 (default: single weights)")
    p.add_argument(
        "--layer-sparsity", action="append", default=[], metavar="NAME=S", help="per-layer target (repeatable)"
    )
    p.add_argument("--prune-output", action="store_true", help="prune the output layer too")
    _add_tuning_args(p)

    p = add_command(
        sub,
        "prune-structured",
        _prune_structured,
        "remove whole Dense units and conv channels, so the exported model does fewer multiply-adds",
        "Remove the least important share of each hidden Dense layer's units and conv layer's output channels "
        "(|incoming| x |outgoing| weights), fine-tune with them held at zero (distilled from the input "
        "model), then remove them exactly. Layers whose channels meet in an Add, Concatenate or fork, and "
        "the output layer, keep all their units.",
    )
    add_model_arg(p)
    add_data_arg(p)
    p.add_argument("--fraction", type=float, default=None, help="share of each layer's units removed (default: 0.5)")
    p.add_argument(
        "--layer-fraction", action="append", default=[], metavar="NAME=F", help="per-layer share (repeatable)"
    )
    p.add_argument(
        "--allocate",
        choices=ALLOCATIONS,
        default=None,
        help="uniform: the share of each layer's units (default); cost: the multiply-adds that leaves, removing "
        "the least important units per multiply-add saved across the layers",
    )
    _add_tuning_args(p, compact=False)

    p = add_command(
        sub,
        "sparsify-l1",
        _sparsify_l1,
        "fine-tune with l1 kernel regularization, then zero small weights",
        "Fine-tune the Dense kernels (not the output layer by default) with an l1 penalty, then set "
        "every weight with |w| < threshold to exactly 0; reports the accuracy before and after zeroing.",
    )
    add_model_arg(p)
    add_data_arg(p)
    p.add_argument("--l1", type=float, default=None, help="l1 factor (default: 1e-3)")
    p.add_argument("--threshold", type=float, default=None, help="weights with |w| below it become 0 (default: 0.02)")
    _add_tuning_args(p)

    p = add_command(
        sub,
        "compact",
        _compact,
        "remove hidden neurons that cannot affect the output",
        "Remove hidden Dense neurons and conv channels whose incoming weights are all zero (their constant output is "
        "folded into the next bias) or whose outgoing weights are all zero; outputs stay equal.",
    )
    add_model_arg(p)
    p.add_argument("--data", default=None, help="check the outputs are unchanged on this data ('digits' or a file)")
    add_label_column_arg(p)
    p.add_argument("--seed", type=int, default=42, help="seed of the data split (default: 42)")
    p.add_argument(
        "--out", required=True, help="output model (.keras or .h5; Keras 3 .keras when the input is Keras 3)"
    )
    p.add_argument("--report", default=None, help="also write the report as JSON here")


def _add_tuning_args(p, compact: bool = True) -> None:
    p.add_argument(
        "--out", required=True, help="output model (.keras or .h5; Keras 3 .keras when the input is Keras 3)"
    )
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: 10)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: 32)")
    p.add_argument("--learning-rate", type=float, default=None, help="Nadam learning rate (default: 5e-4)")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs (default: 3)")
    p.add_argument(
        "--skip", action="append", default=[], metavar="NAME", help="leave this Dense or conv layer alone (repeatable)"
    )
    if compact:
        p.add_argument("--compact", action="store_true", help="then remove the neurons left dead")
    p.add_argument("--report", default=None, help="also write the report as JSON here")


def _check_out(args) -> None:
    if not args.out.endswith(MODEL_SUFFIXES):
        raise UsageError(f"--out {args.out}: use a .keras or .h5 suffix")


def _tuning_options(args) -> dict:
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "patience": args.patience,
        "skip_layers": tuple(args.skip) or None,
        "seed": args.seed,
        "compact": getattr(args, "compact", False) or None,
    }


def _layer_targets(items: list[str], flag: str = "--layer-sparsity") -> dict[str, float]:
    targets = {}
    for item in items:
        name, _, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not name or number is None:
            raise UsageError(f"{flag} {item!r}: expected NAME=VALUE, e.g. dense_1=0.9")
        targets[name] = number
    return targets


def _prune(args) -> int:
    from deploykit.sparsity.config import PruneConfig

    config = PruneConfig().with_options(
        target_sparsity=args.sparsity,
        block_size=args.block,
        layer_sparsity=_layer_targets(args.layer_sparsity),
        skip_output=False if args.prune_output else None,
        **_tuning_options(args),
    )
    _check_out(args)
    model = load_model_arg(args)
    data = load_data_arg(args, model)
    keras3 = writes_keras3(args, args.out)
    progress(f"pruning to {config.target_sparsity:.0%} over {config.epochs} epochs")
    from deploykit.sparsity import prune

    result, report = prune(model, data, config=config, progress=progress)
    return _finish(args, result, report, keras3)


def _prune_structured(args) -> int:
    from deploykit.sparsity import StructuredConfig

    options = {k: v for k, v in _tuning_options(args).items() if k != "compact"}
    config = StructuredConfig().with_options(
        fraction=args.fraction,
        layer_fraction=_layer_targets(args.layer_fraction, "--layer-fraction"),
        allocate=args.allocate,
        **options,
    )
    _check_out(args)
    model, data = load_model_arg(args), load_data_arg(args)
    keras3 = writes_keras3(args, args.out)
    progress(f"removing {_structured_what(config)}, then fine-tuning over {config.epochs} epochs")
    from deploykit.sparsity import prune_structured

    result, report = prune_structured(model, data, config=config, progress=progress)
    return _finish(args, result, report, keras3)


def _structured_what(config) -> str:
    """What a structured config removes, in words (a cost allocation spreads the share unevenly)."""
    if config.allocate == "cost":
        return f"the multiply-adds of {config.fraction:.0%} of each hidden layer's units, by cost"
    return f"{config.fraction:.0%} of each hidden layer's units"


def _sparsify_l1(args) -> int:
    from deploykit.sparsity.config import L1Config

    config = L1Config().with_options(l1=args.l1, threshold=args.threshold, **_tuning_options(args))
    _check_out(args)
    model = load_model_arg(args)
    data = load_data_arg(args, model)
    keras3 = writes_keras3(args, args.out)
    progress(
        f"fine-tuning with l1 = {config.l1:g} over {config.epochs} epochs, then zeroing |w| < {config.threshold:g}"
    )
    from deploykit.sparsity import sparsify_l1

    result, report = sparsify_l1(model, data, config=config, progress=progress)
    return _finish(args, result, report, keras3)


def _compact(args) -> int:
    _check_out(args)
    model = load_model_arg(args)
    keras3 = writes_keras3(args, args.out)
    data = load_data_arg(args, model) if args.data else None
    from deploykit.sparsity import compact

    result, report = compact(model, data)
    return _finish(args, result, report, keras3)


def _finish(args, model, report, keras3: bool) -> int:
    import json

    from deploykit.atomic import write_text
    from deploykit.io.models import save_model_like

    print(report.summary())
    save_model_like(model, args.out, keras3)
    progress(f"saved {args.out}")
    if args.report:
        write_text(args.report, json.dumps(report.to_dict(), indent=2) + "\n")
        progress(f"report {args.report}")
    return 0
