"""``deploykit validate FILE --data D``: run any .onnx or .tflite file in its runtime and report it."""

from __future__ import annotations

from deploykit.cli.common import (
    add_class_names_arg,
    add_command,
    add_custom_objects_arg,
    add_label_column_arg,
    add_task_arg,
    add_tolerance_options,
    progress,
    tolerance_overrides,
)


def register(sub) -> None:
    p = add_command(
        sub,
        "validate",
        _run,
        help="validate an .onnx or .tflite file in its runtime (accuracy, agreement with a reference, size, speed)",
        description="Run FILE in onnxruntime or LiteRT on the test split of --data and print its accuracy, size and "
        "speed. With --reference (the Keras model or float32 ONNX file it came from) agreement and the largest "
        "probability difference are measured too; without it the outputs must fit the data, be finite, and a "
        "classifier's accuracy must stay within 5 points of the reference accuracy recorded in the file. "
        "The file's variant (float32, float16, int8-dynamic, int8-static, "
        "int8-full, int8-weights) is read from what it holds. Exits 1 when a tolerance is missed.",
    )
    p.add_argument("file", help=".onnx or .tflite file")
    p.add_argument("--data", required=True, help="'digits', or an .npz, .csv or IDX file / folder")
    add_label_column_arg(p)
    p.add_argument("--seed", type=int, default=42, help="seed of the data split (default: 42)")
    add_class_names_arg(p)
    add_task_arg(p)
    p.add_argument("--reference", default=None, help="the model FILE came from (.keras, .h5, SavedModel or .onnx)")
    p.add_argument("--unsafe", action="store_true", help="allow Lambda layers and custom code in --reference")
    add_custom_objects_arg(p)
    p.add_argument("--repeats", type=int, default=50, help="timed runs per batch size (default: 50)")
    add_tolerance_options(p)


def _run(args) -> int:
    from pathlib import Path

    from deploykit.export.runtimes import open_runner
    from deploykit.export.validate import validate, validation_markdown
    from deploykit.io.inputs import as_dataset

    overrides = tolerance_overrides(args)
    layout = open_runner(args.file).layout  # several named inputs / outputs: the .npz may be named after them
    data = as_dataset(
        args.data,
        label_column=args.label_column,
        seed=args.seed,
        class_names=args.class_names,
        task=args.task,
        layout=layout,
    )
    progress(f"data {data.summary()}")
    report = validate(
        args.file,
        data,
        _reference(args),
        repeats=args.repeats,
        check=False,
        tolerance=_tolerance(args.file, overrides, data.task),
    )
    print(validation_markdown([report], title=f"Validation of {Path(args.file).name}"), end="")
    if not report.passed:
        from deploykit.errors import ValidationError

        raise ValidationError(str(args.file), report.mismatches, report)
    return 0


def _reference(args):
    """The reference as ``f(x, training=False)``: a Keras model, or an ONNX file run in onnxruntime."""
    if args.reference is None:
        return None
    from pathlib import Path

    if Path(args.reference).suffix.lower() == ".onnx":
        from deploykit.export.runtimes import OnnxRunner

        runner = OnnxRunner(args.reference)
        return lambda x, training=False: runner.predict(x)
    from deploykit.io.lengths import load_model_for

    progress(f"loading reference {Path(args.reference).name}")  # a text model's length: --data's
    return load_model_for(args.reference, args.data, unsafe=args.unsafe, label_column=args.label_column)


def _tolerance(file, overrides, task):
    """The file's default tolerance (by its precision and the data's task) with the overrides applied (None:
    validate's default)."""
    if not any(v is not None for v in vars(overrides).values()):
        return None
    from deploykit.export.validate import file_precision

    return overrides.__class__.for_precision(file_precision(file), task).overridden(overrides)
