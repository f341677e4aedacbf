"""Shared CLI plumbing: common options, error handling, progress lines."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from deploykit.core.task import Task
from deploykit.errors import DeployKitError
from deploykit.log import progress  # noqa: F401  (the commands' progress callback, imported from here)
from deploykit.shipped import SHIPPED_MODEL as DEFAULT_MODEL


def add_command(sub, name: str, handler, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a sub-command with the options every command shares."""
    p = sub.add_parser(name, help=help, description=description or help)
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and more detail")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines: only results, warnings and errors")
    p.set_defaults(handler=handler)
    return p


def add_model_arg(p: argparse.ArgumentParser, optional: bool = False) -> None:
    if optional:
        p.add_argument(
            "model",
            nargs="?",
            default=None,
            help=f"model file or SavedModel folder (default: the shipped {DEFAULT_MODEL.name})",
        )
    else:
        p.add_argument("model", help="model file (.keras, .h5) or SavedModel folder; Keras 3 .keras files are imported")
    p.add_argument(
        "--unsafe",
        action="store_true",
        help="allow Lambda layers, custom code and SavedModel folders (loading them can run arbitrary code)",
    )
    add_custom_objects_arg(p)


def add_custom_objects_arg(p: argparse.ArgumentParser) -> None:
    """``--custom-objects``, declared once for every command that reads a model file."""
    p.add_argument(
        "--custom-objects",
        action="append",
        default=[],
        metavar="FILE.py",
        help="a Python file defining the model's custom Keras 3 layer classes (imported: its code runs); their layers "
        "are read as what their call computes, so the artifacts hold no custom code (repeatable)",
    )


#: What ``--data`` takes, said once for every command's ``--help``.
DATA_HELP = (
    "'digits' or 'diabetes' (embedded), or a data file: an .npz holding arrays x (inputs, [N, ...] as the "
    "model takes them) and y (labels: class ids [N], one-hot rows [N, C], or regression targets [N] / "
    "[N, K]), "
    "or x_train, y_train, x_test, y_test (optionally x_val, y_val) and an optional class_names array; "
    "a .csv with a header (--label-column); or IDX files / a folder of them"
)


def add_data_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--data",
        default=None,
        required=required,
        help=DATA_HELP + ("" if required else "; default: digits for the shipped model, required for your own model"),
    )
    add_label_column_arg(p)
    p.add_argument("--seed", type=int, default=42, help="seed of the data split and of training (default: 42)")
    add_class_names_arg(p)
    add_task_arg(p)


def add_label_column_arg(p: argparse.ArgumentParser) -> None:
    """``--label-column``, declared once for every command that reads a CSV ``--data``."""
    p.add_argument(
        "--label-column",
        default="label",
        help="label column of a CSV file (default: label; several comma-separated columns are regression targets)",
    )


def add_task_arg(p: argparse.ArgumentParser) -> None:
    """``--task``: what the labels are, parsed into :class:`~deploykit.core.task.Task` here, at the CLI's edge."""
    p.add_argument(
        "--task",
        type=Task,
        choices=list(Task),
        default=None,
        help="what the labels are: class ids or names (classification) or numbers to predict (regression); "
        "default: read off the labels and the model's last layer",
    )


def add_tolerance_options(p: argparse.ArgumentParser) -> None:
    """The per-artifact tolerance overrides of ``export`` and ``validate`` (read back by
    :func:`tolerance_overrides`)."""
    p.add_argument("--max-diff", type=float, default=None, help="override: largest allowed probability difference")
    p.add_argument("--min-agreement", type=float, default=None, help="override: smallest allowed class agreement (0-1)")
    p.add_argument(
        "--max-accuracy-drop", type=float, default=None, help="override: largest allowed accuracy drop (0.01 = 1 point)"
    )
    p.add_argument(
        "--max-rel-diff",
        type=float,
        default=None,
        help="override, regressors: largest allowed |prediction - reference| / max(|reference|, its RMS)",
    )
    p.add_argument(
        "--max-rmse-increase",
        type=float,
        default=None,
        help="override, regressors: test RMSE at most this fraction above the reference's (0.05 = 5%%)",
    )


def tolerance_overrides(args):
    """The :class:`~deploykit.export.config.Tolerance` the override flags give (None fields: the defaults)."""
    from deploykit.export.config import Tolerance

    return Tolerance(
        max_abs_diff=args.max_diff,
        min_agreement=args.min_agreement,
        max_accuracy_drop=args.max_accuracy_drop,
        max_rel_diff=args.max_rel_diff,
        max_rmse_increase=args.max_rmse_increase,
    )


def add_class_names_arg(p: argparse.ArgumentParser) -> None:
    """``--class-names``: the classes in the order of the model's outputs, so none is renamed by a sorted guess."""
    p.add_argument(
        "--class-names",
        default=None,
        metavar="A,B,C",
        help="class names in the order of the model's outputs: integer labels are ids into them, string "
        "labels are mapped by them (default: an .npz's class_names array, else ids or sorted labels)",
    )


def load_model_arg(args):
    """The model argument, loaded; inputs it leaves unsized (a text model's length) take ``--data``'s sizes."""
    from deploykit.io.lengths import load_model_for

    path = getattr(args, "model", None) or DEFAULT_MODEL
    progress(f"loading model {Path(path).name}")
    data = getattr(args, "data", None)
    label_column = getattr(args, "label_column", "label")
    return load_model_for(path, data, unsafe=getattr(args, "unsafe", False), label_column=label_column)


def writes_keras3(args, out) -> bool:
    """True when the model argument (already loaded) is a Keras 3 file, so ``out`` is written as one;
    check before the work.

    A Keras 3 user gets back a file Keras 3 opens, as ``optimize`` does; tf_keras in gives tf_keras out.
    """
    from deploykit.errors import UsageError
    from deploykit.io.models import read_model_file

    keras3 = read_model_file(getattr(args, "model", None) or DEFAULT_MODEL).is_keras3
    if keras3 and Path(out).suffix != ".keras":
        raise UsageError(f"--out {out}: the model is a Keras 3 file and is written back as one; use a .keras suffix")
    return keras3


def data_source(args) -> str:
    """``--data``, else digits when the command runs on the shipped model (or trains its own); a model of the
    user's without ``--data`` is a UsageError, never a silent run on digits."""
    from deploykit.data.dataset import DEFAULT_DATASET
    from deploykit.errors import UsageError

    if args.data is not None:
        return args.data
    models = [m for m in (getattr(args, "model", None), *(getattr(args, "models", None) or ())) if m]
    own = [m for m in models if Path(m).resolve() != Path(DEFAULT_MODEL).resolve()]
    if own:
        raise UsageError(
            f"--data is needed: {own[0]} is not the shipped digits model, and deploykit has no data "
            "of its own for it (give an .npz with arrays x and y, a .csv, or IDX files; see --help)"
        )
    return DEFAULT_DATASET


def load_data_arg(args, model=None):
    """``--data`` as a Dataset; ``model`` (a loaded Keras model, or an artifact's path) lets an .npz name its arrays
    after the model's several inputs / outputs."""
    from deploykit.data.dataset import SplitConfig, load_dataset

    layout = None
    if isinstance(model, (str, os.PathLike)):
        from deploykit.export.runtimes import open_runner

        layout = open_runner(model).layout
    elif model is not None:
        from deploykit.core.multi_io_model import layout_of

        layout = layout_of(model)

    def read(task):
        return load_dataset(
            data_source(args),
            label_column=args.label_column,
            split=SplitConfig(seed=args.seed),
            class_names=getattr(args, "class_names", None),
            task=task,
            layout=layout,
        )

    keras_model = model is not None and not isinstance(model, (str, os.PathLike))
    task = getattr(args, "task", None)
    if keras_model:
        from deploykit.io.inputs import read_for_model

        data = read_for_model(read, model, task, progress)
    else:
        data = read(task)
    progress(f"data {data.summary()}")
    if keras_model:
        from deploykit.data.tokens import check_token_ids

        check_token_ids(data, model)  # a text model's ids past its vocabulary: one line, not a native error
    return data


def run_handler(args) -> int:
    """Run a command's handler; every failure is one line ``deploykit CMD: error: ...`` on stderr.

    The rule: a DeployKitError exits with its code (1, or 2 for a usage
    error) and prints its message; anything else exits 1 and prints its type
    and message. The traceback only with ``--verbose``.
    """
    try:
        _protect_inputs(args)
        _import_custom_objects(args)
        result = args.handler(args)
        return int(result or 0)
    except KeyboardInterrupt:
        print(f"deploykit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"deploykit {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, DeployKitError) else 1


#: The arguments that name files a command reads: an --out folder holding one is refused (deploykit.atomic.protect).
_INPUT_ARGS = ("model", "models", "file", "data", "reference", "config", "ood_data")


def _import_custom_objects(args) -> None:
    """Import the ``--custom-objects`` files, registering their classes for every model this command loads."""
    paths = getattr(args, "custom_objects", None)
    if paths:
        from deploykit.keras3.inline import import_custom_objects

        import_custom_objects(paths)


def _protect_inputs(args) -> None:
    from deploykit.atomic import protect

    protect(fresh=True)
    for name in _INPUT_ARGS:
        value = getattr(args, name, None)
        protect(*(value if isinstance(value, list) else [value]))


def error_line(exc: BaseException) -> str:
    """The one line that reports ``exc``: never empty, never several lines."""
    text = " ".join(str(exc).split())
    if isinstance(exc, DeployKitError):
        return text or type(exc).__name__
    if isinstance(exc, MemoryError):
        return (
            f"out of memory (MemoryError{': ' + text if text else ''}); the model or data is too large for this "
            "machine (run with --verbose for the traceback)"
        )
    return f"{type(exc).__name__}{': ' + text if text else ''} (run with --verbose for the traceback)"
