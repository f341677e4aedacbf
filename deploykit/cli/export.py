"""``deploykit export MODEL --formats onnx,tflite --quantize float32,float16,int8-dynamic,int8-full --out DIR``.

MODEL is a Keras model file, or a float32 .onnx file to quantize (prepared for int8 as a Keras model is).
Every artifact is validated in its runtime before the folder is moved into place.
"""

from __future__ import annotations

import argparse

from deploykit.cli.common import (
    add_class_names_arg,
    add_command,
    add_label_column_arg,
    add_model_arg,
    add_task_arg,
    add_tolerance_options,
    progress,
    tolerance_overrides,
)


def _variants_help() -> str:
    """The variants and the formats each exists in, from the exporter's table (no list to keep in step here)."""
    from deploykit.export.config import Quantization

    names = [q.value + ("" if len(q.formats) > 1 else f" ({q.formats[0].value})") for q in Quantization]
    return f"comma-separated variants: {', '.join(names)}; each is written in every requested format it exists in"


def register(sub) -> None:
    p = add_command(
        sub,
        "export",
        _run,
        help="export ONNX and TFLite artifacts (float32, float16, int8 variants), each validated in its own runtime",
        description="Export MODEL to every requested format x quantization, run each artifact in its runtime "
        "(onnxruntime, LiteRT), compare it with MODEL, and write the artifacts (model.onnx, model_float16.onnx, "
        "model_int8-dynamic.onnx, model_int8-full.tflite...) plus validation.md and validation.json into --out. "
        "Float variants need no data: without --data they are compared with MODEL on generated inputs. "
        "MODEL may be a float32 .onnx file, prepared for int8 as a Keras model is and quantized with onnxruntime's "
        "tools. An int8 artifact that misses its tolerance is recovered on the validation split: its inputs "
        "standardized in float (a first Dense layer), then its most harmful layers returned to float. "
        "Nothing is written unless every artifact meets its tolerance.",
    )
    add_model_arg(p)
    add_data_options(p)
    from deploykit.core.multi_io import NPZ_RULE

    p.epilog = NPZ_RULE + "."
    add_variant_options(p)
    p.add_argument("--out", required=True, help="output folder (built aside, moved into place when all artifacts pass)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    add_quantization_options(p)
    add_triton_options(p)
    p.add_argument(
        "--repeats", type=int, default=50, help="timed runs per batch size; the median is reported (default: 50)"
    )
    p.add_argument(
        "--steps",
        default="",
        help="what was done to MODEL before, recorded in the ONNX metadata "
        "(comma-separated, e.g. fold_batchnorm,prune(0.80))",
    )
    add_tolerance_options(p)
    from deploykit.cli.mc import add_conformal_options

    add_conformal_options(p)  # the ONNX artifacts' prediction sets / intervals, after validation (needs --data)


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default=None,
        help="'digits', or an .npz, .csv or IDX file / folder: calibrates int8 and measures accuracy "
        "(default: none; float variants are then checked on generated inputs)",
    )
    add_label_column_arg(p)
    p.add_argument(
        "--seed", type=int, default=42, help="seed of the data split and of the calibration samples (default: 42)"
    )
    add_class_names_arg(p)
    add_task_arg(p)


def add_variant_options(p: argparse.ArgumentParser, default_quantize: str = "float32") -> None:
    """``--formats`` and ``--quantize``, spelled the same in ``export`` and ``optimize``."""
    p.add_argument(
        "--formats",
        default=None,
        metavar="F,F",
        help="comma-separated: onnx, tflite (default: both; onnx for an .onnx MODEL)",
    )
    p.add_argument("--quantize", default=None, metavar="Q,Q", help=f"{_variants_help()} (default: {default_quantize})")
    p.add_argument("--format", dest="old_format", default=None, help=argparse.SUPPRESS)  # renamed: --formats
    p.add_argument("--precisions", dest="old_precisions", default=None, help=argparse.SUPPRESS)  # renamed: --quantize


def add_quantization_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """The int8 knobs (deploykit.export.QuantConfig), named as onnxruntime's quantizers name them.

    With ``defaults=False`` unset knobs stay None, so a config file's values are kept.
    """
    d = (lambda value: value) if defaults else (lambda value: None)  # noqa: E731
    g = p.add_argument_group("int8 quantization")
    g.add_argument(
        "--per-tensor",
        action="store_true",
        default=d(False),
        help="one weight scale per tensor instead of per output channel",
    )
    g.add_argument(
        "--calibration",
        default=d("minmax"),
        choices=["minmax", "entropy", "percentile"],
        help="static int8 calibration method (onnxruntime; TFLite uses minmax) (default: minmax)",
    )
    g.add_argument(
        "--activation-type",
        default=d("auto"),
        choices=["auto", "int8", "uint8"],
        help="int8-static ONNX activations (onnxruntime's activation_type): auto is uint8 on a CPU with int8 "
        "dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX), where onnxruntime runs it fastest, int8 elsewhere "
        "(default: auto)",
    )
    g.add_argument(
        "--num-calibration", type=int, default=d(300), help="training samples that calibrate int8 (default: 300)"
    )
    g.add_argument(
        "--exclude",
        default=d(""),
        metavar="NAMES",
        help="comma-separated ONNX node or Keras layer names left in float (onnxruntime nodes_to_exclude; "
        "TFLite int8-full: float fallback for those layers)",
    )
    g.add_argument(
        "--int8-io", action="store_true", default=d(False), help="int8-full TFLite with int8 input and output tensors"
    )


def quantization_options(args) -> dict:
    """The int8 knobs given on the command line, as QuantConfig fields (unset ones left out)."""
    given = {
        "per_channel": None if args.per_tensor is None else not args.per_tensor,
        "calibration_method": args.calibration,
        "activation_type": args.activation_type,
        "num_calibration": args.num_calibration,
        "exclude": args.exclude,
        "int8_io": args.int8_io,
    }
    return {k: v for k, v in given.items() if v is not None}


def add_triton_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Triton / KServe options; with ``defaults=False`` unset ones stay None (a config file may set them)."""
    d = (lambda value: value) if defaults else (lambda value: None)  # noqa: E731
    g = p.add_argument_group("Triton / KServe")
    g.add_argument(
        "--triton",
        action="store_true",
        help="also write a Triton model repository of every ONNX model and a KServe manifest (kserve.yaml)",
    )
    g.add_argument("--max-batch-size", type=int, default=d(256), help="Triton max_batch_size (default: 256)")
    g.add_argument(
        "--instance-kind", choices=["cpu", "gpu"], default=d("cpu"), help="Triton instance group kind (default: cpu)"
    )
    g.add_argument("--instances", type=int, default=d(1), help="Triton model instances per device (default: 1)")
    g.add_argument(
        "--storage-uri",
        default=None,
        help="where the repository will be uploaded, for kserve.yaml (default: the ${STORAGE_URI} parameter)",
    )


def triton_options(args) -> dict | None:
    """The Triton options given (None without --triton): a table for TritonConfig."""
    if not args.triton:
        return None
    given = {
        "max_batch_size": args.max_batch_size,
        "instance_kind": args.instance_kind,
        "instances": args.instances,
        "storage_uri": args.storage_uri,
    }
    return {k: v for k, v in given.items() if v is not None}


def renamed_options(args) -> dict:
    """``--formats`` / ``--quantize`` with the renamed spellings accepted once more, each with a warning."""
    values = {"formats": args.formats, "quantize": args.quantize}
    for old, new in (("old_format", "formats"), ("old_precisions", "quantize")):
        value = getattr(args, old, None)
        if value is not None:
            flag = "--" + old.removeprefix("old_")
            progress(f"warning: {flag} is deprecated; use --{new} (same values as `deploykit export --help` lists)")
            values[new] = values[new] or value
    return values


def quant_config(args):
    from deploykit.export.config import QuantConfig

    return QuantConfig(**quantization_options(args), seed=args.seed)


def _run(args) -> int:
    from pathlib import Path

    from deploykit.atomic import check_dir_target
    from deploykit.export.config import ExportConfig

    onnx_source = Path(args.model).suffix.lower() == ".onnx"
    chosen = renamed_options(args)
    overrides = tolerance_overrides(args)
    config = ExportConfig(  # bad options are refused before any work
        formats=chosen["formats"] or ("onnx" if onnx_source else "onnx,tflite"),
        quantize=chosen["quantize"] or "float32",
        opset=args.opset,
        quantization=quant_config(args),
        triton=triton_options(args),
        repeats=args.repeats,
        tolerance=overrides if any(v is not None for v in vars(overrides).values()) else None,
    )
    conformal = _conformal_config(args)
    out = check_dir_target(Path(args.out), force=args.force)
    model = args.model if onnx_source else _load_model(args)
    data = _load_data(args, model)  # an .onnx file's several inputs name an .npz's arrays as a model's do
    if conformal is not None:
        from deploykit.uncertainty.conformal_step import check_calibration_rows

        check_calibration_rows(conformal, data)  # refuse a split too small before any work

    from deploykit.export.bundle import JSON_FILE, MARKDOWN_FILE, TRITON_DIR, export_bundle
    from deploykit.export.metadata import ModelMetadata
    from deploykit.export.triton import KSERVE_FILE

    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bundle = export_bundle(
        model,
        data,
        out,
        config,
        force=args.force,
        metadata=ModelMetadata(steps=steps),
        progress=progress,
        task=args.task,
    )
    print(bundle.table(), end="")
    files = [r.path.name for r in bundle.exports] + [MARKDOWN_FILE, JSON_FILE]
    if conformal is not None:
        files.append(_add_conformal(bundle, conformal, data, config, out))
    if bundle.triton_models:
        files += [f"{TRITON_DIR}/", KSERVE_FILE]
    print(f"wrote {', '.join(files)} in {out}")
    for u in bundle.unconverted:
        print(f"rejected {u.file}: {u.reason}")
    return 0


def _conformal_config(args):
    from deploykit.cli.mc import conformal_config
    from deploykit.errors import UsageError

    conformal = conformal_config(args)
    if conformal is not None and args.data is None:
        raise UsageError("--conformal calibrates on the validation split: give --data")
    return conformal


def _add_conformal(bundle, conformal, data, config, out) -> str:
    """The conformal outputs in every ONNX artifact (validated first: they leave the predictions as they are),
    their Triton copies rewritten, and the test split's coverage in conformal.json; returns that file's name."""
    import json

    from deploykit.atomic import write_text
    from deploykit.export.bundle import TRITON_DIR
    from deploykit.export.triton import write_triton_repository
    from deploykit.uncertainty.conformal_step import deterministic_conformal

    reports = {}
    for record in bundle.exports:
        if record.path.suffix != ".onnx":
            continue
        report = deterministic_conformal(record.path, conformal, data, say=progress)
        reports[record.path.name] = report.to_dict()
        if bundle.triton_models:
            names = list(data.class_names) if data.task.value == "classification" else None
            write_triton_repository(
                record.path,
                out / TRITON_DIR,
                record.path.stem,
                config=config.triton,
                class_names=names or None,
                force=True,
            )
        t = report.test
        figure = (
            f"mean width {t.mean_width:.4g}"
            if report.calibration.regression
            else f"mean set size {t.mean_set_size:.2f}"
        )
        print(
            f"{record.path.name}: conformal {report.calibration.method.value} at {conformal.coverage:.0%}, "
            f"test coverage {t.coverage:.1%}, {figure}"
        )
    write_text(out / "conformal.json", json.dumps(reports, indent=2) + "\n")
    return "conformal.json"


def _load_model(args):
    from deploykit.cli.common import load_model_arg

    return load_model_arg(args)


def _load_data(args, model=None):
    if args.data is None:
        progress("no --data: float variants are compared with the model on generated inputs")
        return None
    from deploykit.cli.common import load_data_arg

    return load_data_arg(args, model)
