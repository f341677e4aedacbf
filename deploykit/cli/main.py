"""``deploykit`` entry point.

Each command lives in its own module under ``deploykit.cli`` and exposes
``register(subparsers)``; handlers import TensorFlow and friends inside the
function, so ``deploykit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from deploykit._version import __version__
from deploykit.cli.common import run_handler
from deploykit.log import cli_logging

#: (module under deploykit.cli) in the order ``--help`` lists them.
COMMAND_MODULES = (
    "train",
    "lr_find",
    "fold",
    "sparsity",
    "export",
    "validate",
    "mc",
    "optimize",
    "ensemble",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploykit",
        description="Take a trained Keras model to deployment: fold BatchNorm, prune within an accuracy budget, "
        "quantize, export to TFLite and ONNX, and serve calibrated MC Dropout uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"deploykit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"deploykit.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    with cli_logging(verbose=args.verbose, quiet=args.quiet):
        return run_handler(args)


if __name__ == "__main__":
    sys.exit(main())
