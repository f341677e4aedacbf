"""``deploykit train``: train a dense classifier with the chapter's recommended configuration."""

from __future__ import annotations

from pathlib import Path

from deploykit.cli.common import add_command, add_data_arg, load_data_arg, progress
from deploykit.training.presets import BN_MIN_DEPTH, BatchNorm, Optimizer, Preset, TrainConfig

_DEFAULTS = TrainConfig()


def register(sub) -> None:
    p = add_command(
        sub,
        "train",
        handle,
        help="train a dense classifier with the chapter's recommended configuration (presets default, selu)",
        description="Train a dense classifier: preset 'default' (He init, ELU, BatchNorm when deep, Nadam or "
        "SGD+Nesterov) or 'selu' (LeCun init, SELU, AlphaDropout), 1cycle schedule, early stopping with the best "
        "weights restored. Writes OUT/model.keras, history.json, record.json and learning_curve.png atomically.",
    )
    add_data_arg(p)
    add_config_args(p)
    p.add_argument(
        "--lr",
        default=None,
        metavar="RATE|auto",
        help="1cycle maximum learning rate, or 'auto' to pick it with the finder (default: auto)",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help=f"maximum epochs; 1cycle spans them (default: {_DEFAULTS.epochs})"
    )
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help=f"early-stopping patience on val_loss (default: {_DEFAULTS.patience})",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must be absent or empty unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")


def add_config_args(p) -> None:
    """The model and optimizer options ``train`` and ``lr-find`` share."""
    p.add_argument(
        "--preset",
        choices=[m.value for m in Preset],
        default=None,
        help=f"Table 11-3 'default' or Table 11-4 'selu' (default: {_DEFAULTS.preset.value})",
    )
    p.add_argument(
        "--hidden",
        default=None,
        metavar="W,W,...",
        help=f"hidden layer widths (default: {','.join(map(str, _DEFAULTS.hidden))})",
    )
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help=f"dropout rate, 0 for none; AlphaDropout with selu (default: {_DEFAULTS.dropout:g})",
    )
    p.add_argument(
        "--dropout-layers",
        default=None,
        metavar="all|topK",
        help=f"dropout after every hidden layer or the top K (default: top{_DEFAULTS.dropout_layers})",
    )
    p.add_argument(
        "--batchnorm",
        choices=[m.value for m in BatchNorm],
        default=None,
        help=f"BatchNormalization: auto = on with >= {BN_MIN_DEPTH} hidden layers "
        "(default preset only) (default: auto)",
    )
    p.add_argument(
        "--optimizer",
        choices=[m.value for m in Optimizer],
        default=None,
        help="nadam, or sgd with Nesterov momentum 0.9 (default: nadam)",
    )
    p.add_argument("--batch-size", type=int, default=None, help=f"batch size (default: {_DEFAULTS.batch_size})")
    p.add_argument(
        "--l2", type=float, default=None, help="l2 regularization factor of the Dense kernels (default: 0, none)"
    )


def config_from_args(args) -> TrainConfig:
    """A TrainConfig from the options given (the rest keep TrainConfig's defaults); bad values -> ConfigError."""
    options = {
        "preset": args.preset,
        "hidden": args.hidden,
        "dropout": args.dropout,
        "dropout_layers": args.dropout_layers,
        "batchnorm": args.batchnorm,
        "optimizer": args.optimizer,
        "learning_rate": _rate(getattr(args, "lr", None)),
        "batch_size": args.batch_size,
        "l2": args.l2,
        "epochs": getattr(args, "epochs", None),
        "patience": getattr(args, "patience", None),
        "seed": args.seed,
    }
    return TrainConfig(**{k: v for k, v in options.items() if v is not None})


def _rate(value: str | None) -> float | str | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value  # 'auto', or a ConfigError from TrainConfig


def handle(args) -> int:
    config = config_from_args(args)
    out = Path(args.out)
    data = load_data_arg(args)
    from deploykit.training import train

    shape = ",".join(map(str, config.hidden)) or "none"
    where = "all" if config.dropout_layers == "all" else f"top{config.dropout_layers}"
    dropout = f"dropout {config.dropout:g} ({where})" if config.dropout else "no dropout"
    progress(
        f"training preset {config.preset.value}, hidden {shape}, batchnorm {'on' if config.use_batchnorm else 'off'}, "
        f"{dropout}, {config.optimizer.value}, up to {config.epochs} epochs"
    )
    result = train(config, data, out, force=args.force, progress=progress)
    record = result.record
    print(
        f"test accuracy {record.test_accuracy:.4f} (val {record.val_accuracy:.4f}, best epoch {record.best_epoch} of "
        f"{record.epochs_run}, max learning rate {record.learning_rate:.3g}, {record.params} parameters)"
    )
    print(f"wrote {out}/: {', '.join(record.files)}")
    return 0
