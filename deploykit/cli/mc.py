"""``deploykit mc``: export the MC Dropout ONNX model and compare it with the deterministic model."""

from __future__ import annotations

from deploykit.cli.common import add_command, add_data_arg, add_model_arg, load_data_arg, load_model_arg, progress

MODEL_FILE = "model_mc.onnx"
JSON_FILE = "comparison.json"
MARKDOWN_FILE = "comparison.md"
PLOT_FILE = "reliability.png"


def register(sub) -> None:
    p = add_command(
        sub, "mc", _run,
        help="export the MC Dropout ONNX model and compare deterministic vs MC predictions",
        description=f"Export MODEL as an MC Dropout ONNX model ({MODEL_FILE}) and write, for the test split, "
        f"deterministic vs MC accuracy, NLL, Brier, ECE and the error rate of the most uncertain 10% "
        f"({JSON_FILE}, {MARKDOWN_FILE}) and a reliability diagram ({PLOT_FILE}) into --out.",
    )
    add_model_arg(p)
    add_data_arg(p)
    p.add_argument("--samples", type=int, default=30, help="default number of dropout samples T (default: 30)")
    p.add_argument("--max-samples", type=int, default=1000, help="largest T a client may request (default: 1000)")
    p.add_argument("--mc-seed", type=int, default=None,
                   help="seed of the dropout draws: every new session then repeats the same sequence (default: none)")
    p.add_argument("--include-samples", action="store_true", help="also output the raw [T, N, C] sample probabilities")
    p.add_argument("--batch-size", type=int, default=256, help="instances per onnxruntime call (default: 256)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")


def _run(args) -> int:
    import json
    from pathlib import Path

    from deploykit.atomic import atomic_dir, write_text
    from deploykit.errors import UsageError
    from deploykit.uncertainty import MCConfig, UncertaintyPredictor, compare, export_mc_onnx

    config = MCConfig(samples=args.samples, max_samples=args.max_samples, seed=args.mc_seed,
                      include_samples=args.include_samples)  # refuse bad options before any work
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out)
    with atomic_dir(out, force=args.force) as staging:  # an existing --out is refused before any work
        model = load_model_arg(args)
        data = load_data_arg(args)
        data.check_model(model)
        progress(f"exporting the MC Dropout model (T = {config.samples})")
        record = export_mc_onnx(model, staging / MODEL_FILE, config.samples, config.seed, config.max_samples,
                                config.include_samples, class_names=data.class_names)
        progress(f"predicting {len(data.x_test)} test instances, deterministic and MC")
        deterministic = model.predict(data.x_test, batch_size=args.batch_size, verbose=0)
        mc = UncertaintyPredictor(staging / MODEL_FILE).predict(data.x_test, batch_size=args.batch_size)
        report = compare(data.y_test, deterministic, mc, plot_path=staging / PLOT_FILE)
        exported = {**record.to_dict(), "path": str(out / MODEL_FILE)}
        summary = {"model": str(args.model), "data": data.summary(), "export": exported, "comparison": report.to_dict()}
        write_text(staging / JSON_FILE, json.dumps(summary, indent=2) + "\n")
        write_text(staging / MARKDOWN_FILE, report.to_markdown())
    d, m = report.deterministic, report.mc
    print(f"accuracy {d.accuracy:.4f} -> {m.accuracy:.4f}, NLL {d.nll:.4f} -> {m.nll:.4f}, "
          f"ECE {d.ece:.4f} -> {m.ece:.4f} (deterministic -> MC, T = {config.samples})")
    print(f"wrote {out / MODEL_FILE}, {JSON_FILE}, {MARKDOWN_FILE}, {PLOT_FILE} in {out}")
    return 0
