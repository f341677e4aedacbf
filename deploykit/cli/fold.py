"""``deploykit fold MODEL --out PATH``: fold BatchNormalization and input standardization into Dense and conv layers."""

from __future__ import annotations

from pathlib import Path

from deploykit.cli.common import (
    add_command,
    add_label_column_arg,
    add_model_arg,
    load_model_arg,
    progress,
    writes_keras3,
)
from deploykit.errors import UsageError


def register(sub) -> None:
    p = add_command(
        sub, "fold", handle, help="fold BatchNormalization and Normalization into the Dense and conv layers (exact)"
    )
    add_model_arg(p)
    p.add_argument(
        "--out",
        required=True,
        help="where to write the folded model (.keras or .h5; a Keras 3 input "
        "is written back as a Keras 3 .keras file)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="data the model takes (as other commands' --data), read only to size the input axes the model leaves "
        "unsized (a text model's Input(shape=(None,))): the folded model is written at those sizes",
    )
    add_label_column_arg(p)


def handle(args) -> int:
    out = Path(args.out)
    if out.suffix not in (".keras", ".h5"):
        raise UsageError(f"--out {out}: use a .keras or .h5 suffix")
    model = load_model_arg(args)
    keras3 = writes_keras3(args, out)
    from deploykit.fold import fold_batchnorm
    from deploykit.io.models import save_model_like

    progress("folding")
    folded, report = fold_batchnorm(model, unsafe=args.unsafe)
    save_model_like(folded, out, keras3)
    print(report.table())
    progress(f"wrote {out}")
    return 0
