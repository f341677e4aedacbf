"""``deploykit export MODEL --format onnx,tflite --quantize none,float16,int8 --out DIR``: validated artifacts."""

from __future__ import annotations

from deploykit.cli.common import add_command, add_data_arg, add_model_arg, load_data_arg, load_model_arg, progress


def register(sub) -> None:
    p = add_command(
        sub, "export", _run,
        help="export ONNX and TFLite artifacts (float32, float16, int8), each validated in its own runtime",
        description="Export MODEL to every requested format x quantization, run each artifact in its runtime "
        "(onnxruntime, LiteRT) on the test split, compare it with the Keras model, and write the artifacts plus "
        "validation.md and validation.json into --out. 'int8' is full-integer int8 for TFLite and static QDQ "
        "int8 for ONNX (both calibrated on training samples); 'dynamic' is dynamic-range int8 in both. "
        "Nothing is written unless every artifact meets its tolerance.",
    )
    add_model_arg(p)
    add_data_arg(p)
    p.add_argument("--format", default="onnx,tflite", help="comma-separated: onnx, tflite (default: both)")
    p.add_argument("--quantize", default="none", help="comma-separated: none, float16, int8, dynamic (default: none)")
    p.add_argument("--out", required=True, help="output folder (built aside, moved into place when all artifacts pass)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--triton", action="store_true", help="also write a Triton / KServe model repository of the ONNX artifacts")
    p.add_argument("--max-batch-size", type=int, default=256, help="Triton max_batch_size (default: 256)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--num-calibration", type=int, default=300, help="training samples that calibrate int8 (default: 300)")
    p.add_argument("--int8-io", action="store_true", help="full-integer TFLite with int8 input and output tensors")
    p.add_argument("--repeats", type=int, default=50, help="timed runs per batch size; the median is reported (default: 50)")
    p.add_argument("--steps", default="",
                   help="what was done to MODEL before, recorded in the ONNX metadata (comma-separated, e.g. fold_batchnorm,prune(0.80))")
    p.add_argument("--max-diff", type=float, default=None, help="override: largest allowed probability difference")
    p.add_argument("--min-agreement", type=float, default=None, help="override: smallest allowed class agreement (0-1)")
    p.add_argument("--max-accuracy-drop", type=float, default=None, help="override: largest allowed accuracy drop (0.01 = 1 point)")


def _run(args) -> int:
    from pathlib import Path

    from deploykit.atomic import check_dir_target
    from deploykit.export.config import ExportConfig, Tolerance

    overrides = Tolerance(max_abs_diff=args.max_diff, min_agreement=args.min_agreement, max_accuracy_drop=args.max_accuracy_drop)
    config = ExportConfig(  # bad options are refused before any work
        formats=args.format, quantize=args.quantize, opset=args.opset, num_calibration=args.num_calibration,
        int8_io=args.int8_io, triton=args.triton, max_batch_size=args.max_batch_size, repeats=args.repeats,
        tolerance=overrides if any(v is not None for v in vars(overrides).values()) else None, seed=args.seed,
    )
    out = check_dir_target(Path(args.out), force=args.force)
    model = load_model_arg(args)
    data = load_data_arg(args)

    from deploykit.export.bundle import JSON_FILE, MARKDOWN_FILE, TRITON_DIR, export_bundle
    from deploykit.export.metadata import ModelMetadata

    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bundle = export_bundle(model, data, out, config, force=args.force, metadata=ModelMetadata(steps=steps), progress=progress)
    print(bundle.table(), end="")
    files = [r.path.name for r in bundle.exports] + [MARKDOWN_FILE, JSON_FILE]
    if bundle.triton_models:
        files.append(f"{TRITON_DIR}/")
    print(f"wrote {', '.join(files)} in {out}")
    return 0
