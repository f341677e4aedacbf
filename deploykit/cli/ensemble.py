"""``deploykit ensemble``: K members through fold + prune + int8, evaluated as one ONNX model."""

from __future__ import annotations

import json

from deploykit.cli.common import add_command, add_custom_objects_arg, add_data_arg, load_data_arg, progress
from deploykit.cli.mc import add_uncertainty_options, conformal_config, selective_target
from deploykit.cli.optimize import add_ray_option, add_time_budget_option
from deploykit.core.contract import ENSEMBLE_FILE, MEMBERS_DIR

JSON_FILE = "ensemble.json"
MARKDOWN_FILE = "ensemble.md"
DEFAULT_MEMBERS = 5


def register(sub) -> None:
    p = add_command(
        sub,
        "ensemble",
        _run,
        help="a deep ensemble of pruned int8 members as one ONNX model",
        description=f"Take K model files (or train K members with the chapter's preset and seeds SEED..SEED+K-1), "
        f"run each through fold + prune + int8 ONNX export (deploykit.optimize), and write {ENSEMBLE_FILE}: "
        f"every member "
        f"in one graph on one input, with the MC model's outputs (mean, std, predictive_entropy, mutual_information, "
        f"predicted_class), calibrated by a temperature fitted on the validation split (a regressor: its std scale) "
        f"and, given a target, with an `abstain` output; each member's optimized Keras model beside its ONNX file in "
        f"{MEMBERS_DIR}/; plus {JSON_FILE} / {MARKDOWN_FILE}: the sizes (gzip) against one float32 original and the "
        f"test-split figures (calibration before / after, selective prediction, OOD detection).",
    )
    p.add_argument("models", nargs="*", help="member model files (.keras, .h5); none: train --members of them")
    p.add_argument(
        "--unsafe",
        action="store_true",
        help="allow Lambda layers and custom code (loading them can run arbitrary code)",
    )
    add_custom_objects_arg(p)
    add_data_arg(p)
    p.add_argument(
        "--members",
        type=int,
        default=DEFAULT_MEMBERS,
        help=f"members to train when no model is given (default: {DEFAULT_MEMBERS})",
    )
    p.add_argument("--train-epochs", type=int, default=20, help="training epochs of each member (default: 20)")
    p.add_argument("--sparsity", type=float, default=0.8, help="prune each member to this sparsity (default: 0.8)")
    p.add_argument(
        "--tune-epochs", type=int, default=None, help="fine-tuning epochs of the pruning step (default: optimize's, 30)"
    )
    p.add_argument(
        "--mc-samples",
        type=int,
        default=None,
        metavar="T",
        help="MC Dropout inside each member: every member draws T dropout samples per call and the "
        "outputs reduce all K*T of them (default: deterministic members)",
    )
    add_uncertainty_options(p, regression=True)
    add_time_budget_option(p)
    add_ray_option(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")


def _run(args) -> int:
    import time
    from pathlib import Path

    from deploykit.atomic import atomic_dir, write_text
    from deploykit.errors import UsageError
    from deploykit.uncertainty.ood import load_ood

    if not args.models and args.members < 2:
        raise UsageError(f"--members must be >= 2, got {args.members}")
    if len(args.models) == 1:
        raise UsageError("give at least 2 model files (or none, to train --members of them)")
    if args.mc_samples is not None and args.mc_samples < 1:
        raise UsageError(f"--mc-samples must be >= 1, got {args.mc_samples}")
    target = selective_target(args)  # refuse bad options before any work
    conformal = conformal_config(args)
    ood = load_ood(args.ood_data) if args.ood_data else None
    out = Path(args.out)
    started = time.monotonic()  # a --time-budget counts from here (training members included)
    with atomic_dir(out, force=args.force) as staging:
        data = load_data_arg(args)
        models = _members(args, data)
        summary, markdown = build(
            models,
            data,
            staging,
            mc_samples=args.mc_samples,
            temperature=not args.no_temperature,
            target=target,
            ood=ood,
            conformal=conformal,
            sparsity=args.sparsity,
            epochs=args.tune_epochs,
            ray=args.ray,
            **({} if args.time_budget is None else {"time_budget": args.time_budget, "started": started}),
        )
        summary["data"] = data.summary()
        summary = json.loads(json.dumps(summary, default=str).replace(f"{staging}/", f"{out}/"))
        write_text(staging / JSON_FILE, json.dumps(summary, indent=2) + "\n")
        write_text(staging / MARKDOWN_FILE, to_markdown(summary, markdown))
    s = summary["sizes"]
    print(
        f"{s['members']} members: ensemble {s['ensemble_gzip']} B gzip vs one float32 original {s['original_gzip']} B "
        f"({s['ensemble_gzip'] / s['original_gzip']:.2f}x); {_headline(summary['comparison'])}"
    )
    print(f"wrote {out / ENSEMBLE_FILE}, {JSON_FILE}, {MARKDOWN_FILE} in {out}")
    return 0


def _members(args, data) -> list:
    from deploykit.io.lengths import load_model_for

    if args.models:
        progress(f"loading {len(args.models)} member models")
        models = [load_model_for(p, data, unsafe=args.unsafe) for p in args.models]  # a text model's length: data's
        for m in models:
            data.check_input_shape(m.input_shape)
        return models
    import deploykit
    from deploykit.training import TrainConfig

    models = []
    for k in range(args.members):
        config = TrainConfig(
            hidden=(300, 100),
            dropout=0.2,
            dropout_layers="all",
            epochs=args.train_epochs,
            patience=5,
            seed=args.seed + k,
        )
        progress(f"training member {k + 1}/{args.members} (seed {config.seed})")
        models.append(deploykit.train(config, data).model)
    return models


def build(
    models,
    data,
    folder,
    *,
    mc_samples: int | None = None,
    temperature: bool = True,
    target=None,
    ood=None,
    conformal=None,
    **options,
) -> tuple[dict, str]:
    """:func:`deploykit.pipeline.ensemble.optimize_ensemble` into ``folder``: the summary for ensemble.json and the
    comparison's markdown, for :func:`to_markdown`."""
    from deploykit.pipeline import optimize
    from deploykit.pipeline.ensemble import optimize_ensemble

    run = optimize_ensemble(
        optimize,
        models,
        data,
        folder,
        mc_samples=mc_samples,
        temperature=temperature,
        target=target,
        ood=ood,
        conformal=conformal,
        say=progress,
        **options,
    )
    summary = {
        "ensemble": {**run.bundle.export.to_dict(), "path": ENSEMBLE_FILE},
        "sizes": run.sizes.to_dict(),
        "comparison": run.bundle.comparison.to_dict(),
        "mc_samples": mc_samples,
    }
    return summary, run.bundle.comparison.to_markdown()


def _headline(comparison: dict) -> str:
    """The test figure a user looks at first: NLL (a classifier) or RMSE and 95% coverage (a regressor)."""
    m = comparison["mc"]
    if "coverage_95" in m:
        return f"test RMSE {m['rmse']:.4g}, 95% interval covers {m['coverage_95']:.1%}"
    return f"test NLL {m['nll']:.4f}, accuracy {m['accuracy']:.4f}"


def to_markdown(summary: dict, comparison_markdown: str) -> str:
    """The sizes table, then the ensemble's comparison (``ComparisonReport.to_markdown``) one heading level down."""
    s = summary["sizes"]
    lines = [
        f"# Deep ensemble: {s['members']} pruned int8 members in one ONNX model",
        "",
        *(
            [
                f"MC Dropout inside each member: {summary['mc_samples']} samples each, "
                f"{s['members'] * summary['mc_samples']} "
                "reduced per call.",
                "",
            ]
            if summary.get("mc_samples")
            else []
        ),
        "| artifact | bytes | gzip bytes | gzip vs one float32 original |",
        "|---|---:|---:|---:|",
        f"| one float32 original (.keras) | {s['original_bytes']} | {s['original_gzip']} | 1.00x |",
        f"| {s['members']} int8 member files | {s['members_bytes']} | {s['members_gzip']} | "
        f"{s['members_gzip'] / s['original_gzip']:.2f}x |",
        f"| {ENSEMBLE_FILE} | {s['ensemble_bytes']} | {s['ensemble_gzip']} | "
        f"{s['ensemble_gzip'] / s['original_gzip']:.2f}x |",
        "",
        "The deterministic column is the first int8 member alone.",
        "",
        "",
    ]
    return "\n".join(lines) + comparison_markdown.replace("# ", "## ", 1)
