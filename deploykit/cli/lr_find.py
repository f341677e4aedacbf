"""``deploykit lr-find``: run the learning-rate finder, save the loss-vs-rate plot, print the picked rate."""

from __future__ import annotations

from pathlib import Path

from deploykit.cli.common import add_command, add_data_arg, load_data_arg, progress
from deploykit.cli.train import add_config_args, config_from_args
from deploykit.errors import UsageError


def register(sub) -> None:
    p = add_command(
        sub,
        "lr-find",
        handle,
        help="find the 1cycle maximum learning rate (exponential rate sweep, loss-vs-rate plot)",
        description="Grow the learning rate exponentially from --min-rate to --max-rate over --steps iterations on a "
        "fresh model, record the loss, stop when it explodes, and pick the max rate ten times below the rate at the "
        "lowest smoothed loss. Saves the loss-vs-rate plot (log x axis) as PNG.",
    )
    add_data_arg(p)
    add_config_args(p)
    p.add_argument("--min-rate", type=float, default=1e-5, help="first rate of the sweep (default: 1e-5)")
    p.add_argument("--max-rate", type=float, default=10.0, help="last rate of the sweep (default: 10)")
    p.add_argument("--steps", type=int, default=300, help="iterations of the sweep (default: 300)")
    p.add_argument("--plot", default="lr_find.png", help="where to save the PNG plot (default: lr_find.png)")


def handle(args) -> int:
    config = config_from_args(args)
    plot = Path(args.plot)
    if plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: use a .png suffix")
    data = load_data_arg(args)
    from deploykit.training import find_lr

    progress(f"sweeping the learning rate from {args.min_rate:g} to {args.max_rate:g} over {args.steps} iterations")
    result = find_lr(config, data, min_rate=args.min_rate, max_rate=args.max_rate, steps=args.steps, plot_path=plot)
    end = (
        f"the loss shot up at {result.explode_rate:.3g}"
        if result.exploded
        else "the loss never shot up: widen the range with --max-rate"
    )
    print(
        f"picked max learning rate {result.picked_rate:.3g} (lowest smoothed loss {result.min_loss:.3f} at "
        f"{result.min_loss_rate:.3g}; {end})"
    )
    print(f"wrote {plot}")
    return 0
