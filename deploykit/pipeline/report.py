"""report.json (every figure) and report.md (the table a person reads in ten seconds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deploykit.core.contract import REPORT_FILE
from deploykit.export.cpu import why_slower
from deploykit.pipeline.records import ArtifactRow, Status, StepRecord, Try, Verdict

REPORT_JSON = REPORT_FILE
REPORT_MD = "report.md"

COLUMNS = (
    "artifact",
    "format",
    "quantization",
    "sparsity",
    "size",
    "gzip",
    "compression",
    "accuracy",
    "Δ acc (95% CI)",
    "val Δ acc (95% CI)",
    "agreement",
    "b1 latency",
    "b256 throughput",
    "speed-up b1 / batch",
    "validation",
)
#: A regressor's table: RMSE and its change, and the largest error against the targets, instead of accuracy.
REGRESSION_COLUMNS = (*COLUMNS[:7], "RMSE", "Δ RMSE (95% CI)", "val Δ RMSE (95% CI)", "max abs error", *COLUMNS[11:])


def _size(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:,.2f} MiB"


def _pct(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def _duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms:.3g} ms" if ms >= 1 else f"{1000 * ms:.3g} µs"


def _signed_points(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:+.2f} pt"


def _number(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def _signed_pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:+.1f}%"


def with_ci(v: float | None, ci: Sequence[float] | None, regression: bool = False) -> str:
    """``-0.55 pt [-1.80, +0.70]`` / ``+3.0% [-1.2%, +7.5%]``: a change and its paired 95% interval."""
    if v is None:
        return "—"
    if regression:
        return _signed_pct(v) + ("" if ci is None else f" [{100 * ci[0]:+.1f}%, {100 * ci[1]:+.1f}%]")
    return _signed_points(v) + ("" if ci is None else f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]")


def _val_cell(r: ArtifactRow, regression: bool) -> str:
    v = r.validation
    return "—" if v is None else with_ci(v.change, v.ci95, regression)


def is_regression(rows: Sequence[ArtifactRow]) -> bool:
    """A regressor's rows carry an RMSE (the reference row always has its figure)."""
    return any(r.rmse is not None for r in rows)


def columns_for(rows: Sequence[ArtifactRow]) -> tuple[str, ...]:
    return REGRESSION_COLUMNS if is_regression(rows) else COLUMNS


def artifact_cells(r: ArtifactRow, regression: bool = False) -> list[str]:
    """One table row as text (a regressor's: RMSE, its change and the max abs error where a classifier's has
    accuracy)."""
    figures = (
        [_number(r.rmse), with_ci(r.rmse_change, r.ci95, True), _val_cell(r, True), _number(r.max_abs_error)]
        if regression
        else [_pct(r.accuracy), with_ci(r.accuracy_change, r.ci95), _val_cell(r, False), _pct(r.agreement)]
    )
    return [
        r.file,
        f"{r.format} ({r.runtime})",
        r.quantization,
        _pct(r.sparsity, 1),
        _size(r.size_bytes),
        _size(r.gzip_bytes),
        f"{r.compression:.1f}x",
        *figures,
        _duration(r.latency_b1_ms),
        "—" if r.throughput_b256 is None else f"{r.throughput_b256:,.0f}/s",
        _speedups(r),
        r.verdict.value,
    ]


def _speedups(r: ArtifactRow) -> str:
    """``1.38x / 2.45x``: the original model's float32 file in this runtime over this one (the objective step)."""
    if r.speedup_b1 is None or r.speedup_batch is None:
        return "—"
    return f"{r.speedup_b1:.2f}x / {r.speedup_batch:.2f}x"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width table for the terminal."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def artifacts_text(rows: Sequence[ArtifactRow]) -> str:
    regression = is_regression(rows)
    return text_table(columns_for(rows), [artifact_cells(r, regression) for r in rows])


def step_cells(s: StepRecord) -> list[str]:
    """What a step bought and cost: accuracy, parameters, .keras gzip size, seconds."""
    b, a = s.before, s.after
    if b is not None and a is not None:
        ci = (
            ""
            if s.ci95 is None
            else (
                f" [{100 * s.ci95[0]:+.2f}, {100 * s.ci95[1]:+.2f}]"
                if b.rmse is None
                else f" [{100 * s.ci95[0]:+.1f}%, {100 * s.ci95[1]:+.1f}%]"
            )
        )
        acc = (
            f"{100 * b.accuracy:.2f}% → {100 * a.accuracy:.2f}% ({100 * (a.accuracy - b.accuracy):+.2f} pt{ci})"
            if b.rmse is None
            else f"RMSE {b.rmse:.4g} → {a.rmse:.4g} ({100 * (a.rmse / b.rmse - 1) if b.rmse else 0.0:+.1f}%{ci})"
        )
        params = f"{b.params:,} → {a.params:,}"
        macs = f"{b.kernel_weights:,} → {a.kernel_weights:,}"
        size = f"{_size(b.keras_gzip_bytes)} → {_size(a.keras_gzip_bytes)}"
        sparsity = f"{100 * b.sparsity:.1f}% → {100 * a.sparsity:.1f}%"
    else:
        acc = params = macs = size = sparsity = ""
    note = s.reason + (f" [checked: {s.checks}]" if s.checks else "")
    return [s.step, s.status.value, f"{s.seconds:.1f} s", acc, sparsity, params, macs, size, note]


STEP_COLUMNS = (
    "step",
    "status",
    "time",
    "test accuracy / RMSE [95% CI of the change]",
    "sparsity",
    "parameters",
    "kernel weights",
    ".keras gzip",
    "what it did",
)


TRY_COLUMNS = ("stage", "setting", "val accuracy", "val Δ acc (95% CI)", "gzip", "kept", "note")
REGRESSION_TRY_COLUMNS = ("stage", "setting", "val RMSE", "val Δ RMSE (95% CI)", "gzip", "kept", "note")


def try_cells(t: Try) -> list[str]:
    """One try as text: setting -> accuracy (or RMSE), size, kept or not."""
    note = t.note if len(t.note) <= 90 else t.note[:87] + "..."
    figures = (
        [_number(t.rmse), with_ci(t.rmse_change, t.ci95, True)]
        if t.rmse is not None
        else [_pct(t.accuracy), with_ci(t.accuracy_change, t.ci95)]
    )
    return [
        t.stage.value,
        t.setting,
        *figures,
        _size(t.gzip_bytes) if t.gzip_bytes else "—",
        "yes" if t.kept else "no",
        note.replace("|", "/"),
    ]


def build_report(
    *,
    config,
    task=None,
    data_summary: str,
    model_summary: dict[str, Any],
    original,
    final,
    steps: Sequence[StepRecord],
    artifacts: Sequence[ArtifactRow],
    tries: Sequence[Try],
    layer_sparsity,
    mc,
    plots: Sequence[str],
    seconds: float,
    version: str,
    resolution: dict | None = None,
) -> dict[str, Any]:
    """The whole report as JSON-ready values (the typed records become JSON here, and only here)."""
    from deploykit.records import to_jsonable

    return to_jsonable(
        {
            "deploykit_version": version,
            "config": config.to_dict(),
            "data": data_summary,
            "model": model_summary,
            "original": original,
            "final": final,
            "steps": list(steps),
            "artifacts": list(artifacts),
            "budget": {
                **_budget_entry(config, task, original),
                **_decision_entry(resolution, config.sparsity.prune.tune_holdout),
                "shipped": [a.file for a in artifacts if a.verdict.shipped and a.verdict is not Verdict.REFERENCE],
                "rejected": [a.file for a in artifacts if a.verdict is Verdict.REJECTED],
            },
            "tries": list(tries),
            "layer_sparsity": list(layer_sparsity),
            "mc": mc,
            "plots": list(plots),
            "seconds": round(seconds, 2),
            "notes": notes(artifacts),
        }
    )


def _budget_entry(config, task, original) -> dict[str, Any]:
    """The budget under its one name (max_accuracy_drop, or a regressor's max_rmse_increase) and the original's
    figure."""
    from deploykit.core.task import Task

    if task is Task.REGRESSION:
        return {
            "metric": "rmse",
            "max_rmse_increase": config.validate.max_rmse_increase,
            "original_rmse": original.rmse,
        }
    return {
        "metric": "accuracy",
        "max_accuracy_drop": config.validate.max_accuracy_drop,
        "max_nll_increase": config.validate.max_nll_increase,
        "original_accuracy": original.accuracy,
    }


def _decision_entry(resolution: dict | None, tune_holdout: float = 0.0) -> dict[str, Any]:
    """Where the budget is decided and confirmed, by which rule, whether each split can resolve it, and which rows
    the fine-tunes stop early on (``tune_holdout``: not the validation rows, unless it is 0)."""
    from deploykit.sparsity.holdout import stopping_text

    return {
        "decided_on": "validation",
        "early_stopping": stopping_text(tune_holdout),
        "confirmed_on": "test",
        "rule": "validation: point estimate within the budget and its 95% interval not entirely beyond it; "
        "test: point estimate within the budget, or, on a test split too small to resolve the budget, its 95% "
        "interval not entirely beyond it (a miss after validation accepted is a test miss)",
        "interval": "95% of the paired difference: Tango's score interval for accuracy, paired bootstrap for RMSE",
        "resolution": resolution or {},
    }


def notes(artifacts: Sequence[ArtifactRow]) -> list[str]:
    """Honest remarks the figures call for: int8 / float16 slower than float32 in the same runtime.

    Checked at batch 1 (latency) and at batch 256 (throughput): a variant can lose at one and win at the
    other, and a smaller file that runs slower must say so rather than pass for the better choice.
    """
    out = []
    base = {(r.format, r.runtime): r for r in artifacts if r.precision == "float32" and r.format in ("onnx", "tflite")}
    for r in artifacts:
        ref = base.get((r.format, r.runtime))
        if r.precision == "float32" or ref is None:
            continue
        slower = [f"{ratio:.2f}x slower at batch {batch}" for ratio, batch in _slowdowns(r, ref) if ratio > 1.05]
        if slower:
            why = why_slower(r.precision)
            because = f", because {why}" if why else ""
            out.append(
                f"{r.file}: {r.precision} is {' and '.join(slower)} than float32 in {r.runtime} on this CPU{because} "
                f"(it buys size: {ref.gzip_bytes / r.gzip_bytes:.1f}x smaller gzip)"
            )
    return out


def _slowdowns(row: ArtifactRow, ref: ArtifactRow) -> list[tuple[float, int]]:
    """(how many times slower than ``ref``, batch size) at batch 1 and 256, where both were measured."""
    out = []
    if row.latency_b1_ms and ref.latency_b1_ms:
        out.append((row.latency_b1_ms / ref.latency_b1_ms, 1))
    if row.throughput_b256 and ref.throughput_b256:
        out.append((ref.throughput_b256 / row.throughput_b256, 256))
    return out


def markdown(
    report: dict[str, Any],
    artifacts: Sequence[ArtifactRow],
    steps: Sequence[StepRecord],
    tries: Sequence[Try] = (),
    sections: Sequence[str] = (),
) -> str:
    """report.md: the artifact table first, then the tries, the steps, MC Dropout, the steps' own ``sections``
    (:attr:`StepOutput.sections`), plots and notes."""
    original = report["original"]
    regression = is_regression(artifacts)
    figure = f"test RMSE {original['rmse']:.4g}" if regression else f"test accuracy {100 * original['accuracy']:.2f}%"
    meaning = (
        "RMSE: against the test targets; Δ RMSE: as a fraction of the original model's; max abs error: the "
        "largest |prediction - target|."
        if regression
        else "Δ acc: test accuracy against the original model on the same rows, with the 95% interval of the paired "
        "difference; val Δ acc: the same on the validation split, where the budget was decided. "
        "Agreement: predicted classes equal to those of the "
        "Keras model the artifact was made from (the optimized `model.keras`; for `model.keras`, the original)."
    )
    lines = [
        "# deploykit optimize report",
        "",
        f"Model `{report['model'].get('name', '?')}` ({original['params']:,} parameters, {figure}) "
        f"on {report['data']}; "
        f"pipeline: {report['model'].get('pipeline', '')}; {report['seconds']:.0f} s.",
        "",
        markdown_table(columns_for(artifacts), [artifact_cells(r, regression) for r in artifacts], right=range(3, 14)),
        "",
        *fallback_line(report),
        "Compression: gzip size of the original model saved as `.keras` divided by the artifact's gzip size. "
        f"{meaning} Latency: median of repeated single-example calls; "
        "throughput: examples per second at batch 256 (one process, this machine). Speed-up: the original model's "
        "float32 file in the same runtime over this one, at batch 1 and at the objective's batch size (> 1: faster; "
        "see Recommended).",
        "",
        *_budget_lines(report, artifacts, tries),
        "## What each step bought and cost",
        "",
        markdown_table(STEP_COLUMNS, [step_cells(s) for s in steps]),
        "",
    ]
    mc = report.get("mc")
    if mc and "deterministic_rmse" in mc:  # a regressor's MC model
        from deploykit.uncertainty.compare import regression_markdown

        first, *rest = regression_markdown(mc)  # its title, then its own ## sections: one level down here
        lines += [
            first.replace("# Deterministic vs MC Dropout regression", "## MC Dropout regression", 1),
            *(line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in rest),
        ]
        lines.append("")
    elif mc:
        d, m = mc["deterministic"], mc["mc"]
        lines += [
            f"## MC Dropout (T = {mc['samples']}, {mc['count']} test instances)",
            "",
            markdown_table(
                ("metric", "deterministic", "MC Dropout"),
                [
                    ("accuracy", f"{d['accuracy']:.4f}", f"{m['accuracy']:.4f}"),
                    ("NLL", f"{d['nll']:.4f}", f"{m['nll']:.4f}"),
                    ("Brier", f"{d['brier']:.4f}", f"{m['brier']:.4f}"),
                    (f"ECE ({d['bins']} bins)", f"{d['ece']:.4f}", f"{m['ece']:.4f}"),
                ],
                right=(1, 2),
            ),
            "",
        ]
        for u in mc.get("uncertain", []):
            rest = u["rest_error"]
            lines.append(
                f"- {u['predictions']} / {u['measure']}: error {u['uncertain_error']:.3f} among the "
                f"{u['uncertain_count']} most uncertain vs {rest:.3f} in the rest"
            )
        lines += [line.replace("## ", "### ", 1) for line in _mc_extras(mc)]
        lines.append("")
    lines += sections  # what the steps add (the ensemble's comparison)
    if report["plots"]:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]] + [""]
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    skipped = [s for s in steps if s.status is not Status.DONE]
    if skipped:
        lines += ["## Skipped steps", ""] + [f"- {s.step}: {s.status.value} — {s.reason}" for s in skipped] + [""]
    return "\n".join(lines)


def fallback_line(report: dict[str, Any]) -> list[str]:
    """Under the table: the run shipped your folded model where nothing of the compressed one shipped (report.json
    ``fallback``, written by :mod:`deploykit.pipeline.fallback`); [] otherwise."""
    entry = report.get("fallback")
    return [f"**Fallback**: {entry['line']}. See the section below.", ""] if entry else []


def _mc_extras(mc: dict[str, Any]) -> list[str]:
    """Temperature, selective threshold and OOD figures (the text ``deploykit mc`` writes), and their plots."""
    from deploykit.uncertainty.compare import extra_markdown

    lines = extra_markdown(mc)
    shown = [p for p in mc.get("plots", []) if p != "reliability.png"]  # the reliability plot is in ## Plots
    return lines + (["", *(f"![{p}]({p})" for p in shown)] if shown else [])


def _budget_lines(report: dict[str, Any], artifacts: Sequence[ArtifactRow], tries: Sequence[Try]) -> list[str]:
    """The accuracy budget, what was rejected, and the table of every setting tried."""
    budget = report["budget"]
    if "max_rmse_increase" in budget:
        lines = [
            f"## RMSE budget: at most {100 * budget['max_rmse_increase']:g}% above the original "
            f"({budget['original_rmse']:.4g})",
            "",
        ]
    else:
        lines = [
            f"## Accuracy budget: {100 * budget['max_accuracy_drop']:g} pt below the original "
            f"({100 * budget['original_accuracy']:.2f}%)",
            "",
        ]
    lines += [
        "Every decision (sparsity target, int8 fallback, temperature, thresholds) is taken on "
        "the validation split: a try is kept when its point estimate is within the budget and its 95% interval "
        "is not entirely beyond it. The test split is measured once per shipped candidate to confirm: "
        "an artifact accepted on validation that misses on test is rejected as a **test miss**. "
        "Intervals: 95% of the paired difference against the original on the same rows."
        + (f" Fine-tunes stop early on {budget['early_stopping']}." if budget.get("early_stopping") else ""),
        "",
    ]
    for split, r in (budget.get("resolution") or {}).items():
        if not r["resolves_budget"]:
            lines.append(
                f"- **the {split} split ({r['rows']} rows) cannot resolve this budget**: a no-op has a 95% "
                f"interval of ±{100 * r['no_op_half_width']:.2f} pt; the smallest budget it resolves is "
                f"{100 * r['smallest_resolvable_budget']:g} pt"
            )
    rejected = [a for a in artifacts if a.verdict is Verdict.REJECTED]
    lines += [f"- **rejected, not shipped**: `{a.file}`: {a.checks}" for a in rejected]
    if lines[-1] != "":
        lines.append("")
    if tries:
        header = REGRESSION_TRY_COLUMNS if "max_rmse_increase" in budget else TRY_COLUMNS
        lines += [markdown_table(header, [try_cells(t) for t in tries], right=(2, 3, 4)), ""]
    return lines
