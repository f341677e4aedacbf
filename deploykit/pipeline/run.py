"""``optimize``: run the pipeline on a model and write the artifacts and the report, atomically."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.atomic import atomic_dir, protect, write_text
from deploykit.core.evaluate import Metric
from deploykit.core.task import OutputKind, Task
from deploykit.errors import StepError, UsageError, ValidationError
from deploykit.pipeline.config import OptimizeConfig
from deploykit.pipeline.confirm import reference_outputs, resolution_notes
from deploykit.pipeline.context import (
    ORIGINAL_FILE,
    RunContext,
    Step,
    describe_figure,
    keras_row,
    model_figures,
    sparsity_rows,
    timed,
)
from deploykit.pipeline.ensemble import load_member
from deploykit.pipeline.objective import merged_notes, recommendation_of, with_speedups
from deploykit.pipeline.plots import (
    ACCURACY_PLOT,
    LATENCY_PLOT,
    SPARSITY_PLOT,
    accuracy_vs_size,
    latency,
    layer_sparsity,
)
from deploykit.pipeline.records import ArtifactRow, LayerSparsityRow, Status, StepOutput, StepRecord, Try, Verdict
from deploykit.pipeline.report import REPORT_JSON, REPORT_MD, artifacts_text, build_report, markdown
from deploykit.pipeline.split_check import split_check
from deploykit.records import to_jsonable

CONFIG_FILE = "deploykit.toml"


@dataclass
class OptimizeResult:
    """What ``optimize`` wrote into ``out_dir`` and measured."""

    out_dir: Path
    model: Any  # the optimized model (saved as model.keras): a Keras 3 object when the input was Keras 3
    config: OptimizeConfig  # what ran (also in out_dir/deploykit.toml)
    steps: list[StepRecord]
    artifacts: list[ArtifactRow]  # shipped and rejected (a rejected row keeps its numbers; its file is gone)
    tries: list[Try]  # every setting tried to meet the accuracy budget
    report: dict[str, Any]  # report.json

    @property
    def shipped(self) -> list[ArtifactRow]:
        """Deployable artifacts whose file is in the output folder (the reference original.keras left out)."""
        return [r for r in self.artifacts if r.verdict.shipped and r.verdict is not Verdict.REFERENCE]

    @property
    def rejected(self) -> list[ArtifactRow]:
        return [r for r in self.artifacts if r.verdict is Verdict.REJECTED]

    @property
    def failure(self) -> str | None:
        """One line when the run failed its purpose, else None.

        It failed when nothing deployable meets the budget (no ONNX / TFLite artifact shipped; with
        export off, no model.keras), or, with ``[validate] strict``, when any artifact was rejected.
        """
        exported = [r for r in self.artifacts if r.format != "keras"]
        deployable = [r for r in (exported if exported else self.artifacts) if r in self.shipped]
        rejected = ", ".join(f"{r.file} ({r.checks})" for r in self.rejected)
        if not deployable:
            v = self.config.validate
            budget = (
                f"RMSE budget (+{100 * v.max_rmse_increase:g}%)"
                if any(r.rmse is not None for r in self.artifacts)
                else f"accuracy budget ({100 * v.max_accuracy_drop:g} pt)"
            )
            return f"nothing deployable meets the {budget}: rejected {rejected or 'everything'}"
        if self.config.validate.strict and self.rejected:
            return f"--strict: {len(self.rejected)} artifact(s) rejected: {rejected}"
        return None

    @property
    def fallback(self) -> dict[str, Any] | None:
        """report.json ``fallback``: your folded model shipped where nothing of the compressed model did (None: the
        compressed model shipped; :mod:`deploykit.pipeline.fallback`)."""
        return self.report.get("fallback")

    @property
    def recommended(self) -> str | None:
        """The file the run's ``[plan] objective`` recommends (report.json ``objective``; None: nothing timed)."""
        return (self.report.get("objective") or {}).get("chosen")

    def artifact(self, file: str) -> ArtifactRow:
        """The row of one artifact, by file name (e.g. ``"model.onnx"``)."""
        for row in self.artifacts:
            if row.file == file:
                return row
        raise KeyError(f"no artifact {file!r}; artifacts: {', '.join(r.file for r in self.artifacts)}")

    def table(self) -> str:
        """The artifact table as fixed-width text (what the CLI prints)."""
        return artifacts_text(self.artifacts)


def optimize(
    model=None,
    data=None,
    *,
    config: OptimizeConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    unsafe: bool = False,
    **options: Any,
) -> OptimizeResult:
    """Fold, sparsify, compact, export, build the MC Dropout model and validate, as ``config`` says.

    ``model``: a tf_keras model or a model file (default: ``config.input.model``).
    ``data``: a Dataset, ``"digits"`` or a data file (default: ``config.input.data``); the
    deploykit.toml written records paths made absolute, and a Dataset object by its name.
    ``options``: flat overrides of the config (see :meth:`OptimizeConfig.with_options`),
    e.g. ``fold=False, sparsity=0.9, formats="onnx", mc=False``.
    ``out_dir`` is built aside and moved into place when the run ends; an existing
    non-empty folder is refused unless ``force``. Without ``out_dir`` a new temporary folder is
    used (``result.out_dir``). ``max_accuracy_drop`` (an option, default 0.01: one point) is the
    budget every kept model and shipped artifact meets against the original model: decided on the
    validation split, confirmed once on the test split (a test miss rejects); an artifact that
    misses it is rejected (its row in the report, its file not written) and
    the run goes on: ``result.failure`` says whether anything deployable is left. A step that finds
    a bug (a fold that changes the outputs) raises StepError and writes nothing.
    """
    started = time.monotonic()  # the time budget counts from here: loading the model and data is part of the run
    config = (config or OptimizeConfig()).with_options(**options)
    say = progress or _silent
    if model is None and config.input.model is None:
        raise UsageError("optimize: no model given (pass a tf_keras model or a file, or set [input] model)")
    _check_data_given(model, data, config)
    if out_dir is not None:
        return _prepare_and_run(model, data, config, Path(out_dir), force, say, unsafe, started)
    out = Path(tempfile.mkdtemp(prefix="deploykit-optimize-"))
    try:
        return _prepare_and_run(model, data, config, out, True, say, unsafe, started)
    except BaseException:
        out.rmdir()  # atomic_dir left it as it was: empty
        raise


def _check_data_given(model, data, config: OptimizeConfig) -> None:
    """Refuse a user's model without data: the default data (digits) fits the shipped model only, and a run on it
    would fail later blaming digits, or worse, succeed on the wrong data (the CLI's ``--data`` rule, for the API)."""
    from deploykit.data.dataset import DEFAULT_DATASET
    from deploykit.shipped import SHIPPED_MODEL

    if data is not None or config.input.data != DEFAULT_DATASET:
        return
    source = model if model is not None else config.input.model
    if isinstance(source, (str, os.PathLike)) and Path(source).resolve() == SHIPPED_MODEL.resolve():
        return
    raise UsageError(
        "optimize: data is needed: the model is not the shipped digits model, and deploykit has no data of its own "
        "for it (pass data= an .npz with arrays x and y, a .csv, IDX files or (x, y) arrays; data='digits' to run "
        "on the embedded digits anyway)"
    )


def _silent(_message: str) -> None:
    """The progress callback of a run nobody watches."""


def build_pipeline(config: OptimizeConfig, plan=None) -> list[Step]:
    """The steps a config runs, in the order of :data:`deploykit.pipeline.registry.STEPS` (switched-off steps stay
    in the list and record why they did nothing); the runner knows no step by name. Under a time budget (``plan``)
    the exports run most wanted first (:func:`deploykit.pipeline.budget.priority`)."""
    from deploykit.pipeline.registry import STEPS

    return [Step(name, run) for spec in STEPS for name, run in spec.steps(config, plan, engine=optimize)]


def _prepare_and_run(
    model, data, config: OptimizeConfig, out: Path, force: bool, say, unsafe: bool, started: float | None = None
) -> OptimizeResult:
    """Load what was given as paths, check model and data fit, and run inside the staging folder."""
    from deploykit.data.dataset import NAMED_DATASETS
    from deploykit.data.tokens import check_token_ids
    from deploykit.io.inputs import as_dataset, as_model, is_keras3_model, read_for_model
    from deploykit.io.lengths import load_model_for
    from deploykit.io.models import read_model_file

    keras3 = False
    protect(model, data, config.input.model, config.input.data)  # an --out holding them is refused, even with force
    with atomic_dir(out, force=force) as staging:  # an existing --out is refused before any work
        if model is None or isinstance(model, (str, os.PathLike)):
            path = str(model if model is not None else config.input.model)
            say(f"loading model {path}")
            sizes = data if data is not None else config.input.data  # a text model's length: the data's
            model = load_model_for(path, sizes, unsafe=unsafe, say=say, label_column=config.input.label_column)
            keras3 = read_model_file(path).is_keras3  # give back what the user's framework opens
            config = config.with_input(model=str(Path(path).resolve()))
        else:  # a Keras 3 model object is imported as its file would be; a tf_keras one read as its file is
            keras3 = is_keras3_model(model)
            sizes = data if data is not None else config.input.data
            model = as_model(model, unsafe=unsafe, what="optimize: model", data=sizes, say=say)
        from deploykit.core.multi_io_model import layout_of
        from deploykit.io.models import check_single_io

        model = check_single_io(model)  # a tf_keras object with several inputs / outputs: packed as a file is
        layout = layout_of(model)  # several inputs / outputs: the data may be named after them
        source = data if data is not None else config.input.data
        if isinstance(source, (str, os.PathLike)):
            source = str(source)
            config = config.with_input(data=source if source in NAMED_DATASETS else str(Path(source).resolve()))
        data = read_for_model(
            lambda task: as_dataset(
                source,
                label_column=config.input.label_column,
                seed=config.input.seed,
                class_names=config.input.class_names,
                task=task,
                layout=layout,
            ),
            model,
            config.input.task,
            say,
        )
        if not isinstance(source, str):
            config = config.with_input(data=data.name)
        task, kind = data.check_model(model)  # resolved once: every step reads it from the run's context
        check_token_ids(data, model)  # a text model's ids past its vocabulary: one line now, not a native error
        for file in config.ensemble.members:  # a bad member fails now, not after the run's sparsity search
            load_member(file, data, unsafe)
        if config.conformal.config() is not None:  # so does a validation split too small for the conformal sets
            from deploykit.uncertainty.conformal_step import check_calibration_rows

            check_calibration_rows(config.conformal.config(), data)
        say(f"data {data.summary()}; model: {task.value} ({kind.value})")
        say(f"pipeline: {config.summary(task)}")
        result = _run(model, data, config, staging, out, say, keras3, task, kind, unsafe, started)
    if keras3:  # a Keras 3 input (file or object) gets its optimized model back as a Keras 3 object
        from deploykit.io.keras3_api import as_keras3

        result = as_keras3(result)
    return result


def _run(
    model,
    data,
    config: OptimizeConfig,
    staging: Path,
    out: Path,
    say,
    keras3: bool = False,
    task: Task = Task.CLASSIFICATION,
    kind: OutputKind = OutputKind.PROBABILITIES,
    unsafe: bool = False,
    started: float | None = None,
) -> OptimizeResult:
    """Run the steps; each returns its model, record and artifacts, aggregated here (no step writes shared state)."""
    from deploykit._version import __version__
    from deploykit.core.graph import copy_model
    from deploykit.io.models import save_model_like

    start = time.perf_counter()
    say("measuring the original model")
    original = copy_model(
        model, unsafe=True
    )  # a fresh copy (loading already checked the layers): nothing a step does reaches the caller's model
    save_model_like(original, staging / ORIGINAL_FILE, keras3)
    figures = model_figures(original, data)
    ctx = RunContext(
        data,
        config,
        staging,
        say,
        original,
        figures,
        figures,
        keras3=keras3,
        task=task,
        kind=kind,
        unsafe=unsafe,
        reference=reference_outputs(original, data, kind),
    )
    say(
        f"original model: {figures.params:,} parameters, {describe_figure(figures)}, "
        f".keras {figures.keras_bytes / 1024:.1f} KiB ({figures.keras_gzip_bytes / 1024:.1f} KiB gzip)"
    )
    if ctx.metric is Metric.RMSE and figures.rmse == 0:
        say(
            "the original model's test RMSE is 0 (the targets are its own outputs): a share of it has no size, so "
            f"the budget holds each file's RMSE itself to at most {ctx.budget.limit:g}, in the targets' units"
        )
    resolution, warnings = resolution_notes(data, ctx.budget) if config.validate.enabled else ({}, [])
    split_figures, split_lines = split_check(data, ctx.reference, ctx.budget)
    for line in [*warnings, *split_lines]:  # before any training: the user can stop here and give more rows
        say(line)
    reference = keras_row(original, ORIGINAL_FILE, ctx, Verdict.REFERENCE, "the original model")
    plan = None  # measured and said when someone listens or a time budget needs it
    if config.plan.time_budget is not None or say is not _silent:
        plan = _plan(original, data, config, started, time.perf_counter() - start)
        say(plan.line())
    ctx = dataclasses.replace(ctx, plan=plan)
    outputs: list[StepOutput] = []
    current = original
    pipeline = build_pipeline(config, plan)
    for k, step in enumerate(pipeline, start=1):
        say(f"step {k}/{len(pipeline)}: {step.name}")
        try:
            out_k = _planned_step(step, current, ctx, plan)
        except (StepError, ValidationError) as exc:
            raise _failed(step.name, exc, staging, out) from exc
        say(f"  {out_k.record.status.value}: {out_k.record.reason} ({out_k.record.seconds:.1f} s)")
        outputs.append(out_k)
        current = out_k.model
        ctx = dataclasses.replace(
            ctx,
            figures=out_k.record.after or ctx.figures,
            applied=ctx.applied + out_k.applied,
            made=(*ctx.made, out_k),
        )
    return _write(
        model,
        original,
        reference,
        outputs,
        ctx,
        current,
        start,
        out,
        __version__,
        resolution,
        (split_figures, split_lines),
    )


def _plan(original, data, config: OptimizeConfig, started: float | None, model_step: float):
    """Measure this model's costs and plan the run (within ``[search] time_budget`` when given); ``model_step``:
    the seconds measuring the original model took (fold, compact and save each cost about as much)."""
    from deploykit import progress as live
    from deploykit.core.graph import graph_from_model
    from deploykit.core.layers import Role
    from deploykit.pipeline.budget import make_plan, measure

    live.step("measuring a fine-tuning epoch on this model")
    layers = [n for n in graph_from_model(original, unsafe=True).nodes if n.spec.support.prunable]
    start, n = time.monotonic() if started is None else started, max(0, len(layers) - 1)
    convolutions = any(node.spec.support.role is Role.CONV for node in layers)
    costs = measure(
        original,
        data,
        config.sparsity.prune,
        model_step=model_step,
        worth_training=lambda optimistic: make_plan(config, optimistic, start, n, convolutions).search,
    )
    return make_plan(config, costs, start, n, convolutions)


def _planned_step(step: Step, model, ctx: RunContext, plan) -> StepOutput:
    """Run a step unless the time budget skips it (said in its record); the first export's cost re-plans the rest."""
    from deploykit import progress as live
    from deploykit.pipeline.budget import observe_step, skipped_reason

    reason = skipped_reason(plan, step.name, ctx.config) if plan is not None else None
    if reason:
        return StepOutput(model, StepRecord(step.name, Status.SKIPPED, reason))
    live.step(step.name)
    out = timed(step, model, ctx)
    if plan is not None:
        observe_step(plan, step.name, ctx.config, out.record.seconds)
    return out


def _write(
    model,
    original,
    reference: ArtifactRow,
    outputs: list[StepOutput],
    ctx: RunContext,
    current,
    start: float,
    out: Path,
    version: str,
    resolution: dict | None = None,
    splits: tuple[dict, list[str]] = ({}, []),
) -> OptimizeResult:
    """Aggregate what the steps returned into report.json, report.md, the plots and deploykit.toml; ``splits``: what
    :func:`~deploykit.pipeline.split_check.split_check` found (report.json `split_check`, its lines in the notes)."""
    from deploykit.core.custom_dropout import assumption
    from deploykit.core.nested import flattened
    from deploykit.io.lengths import sizing
    from deploykit.pipeline.registry import STEPS

    staging, config, say = ctx.folder, ctx.config, ctx.say
    records = [o.record for o in outputs]
    recommendation = recommendation_of(records)  # the objective step's times: the speed-up column
    artifacts = with_speedups([reference, *(a for o in outputs for a in o.artifacts)], recommendation)
    layer_rows: list[LayerSparsityRow] = [
        *sparsity_rows(original, "original"),
        *(r for o in outputs for r in o.layer_sparsity),
    ]
    tries = [t for o in outputs for t in o.tries]
    mc = next((o.mc for o in outputs if o.mc is not None), None)
    say("writing the report and plots")
    drawn = [
        accuracy_vs_size(
            artifacts,
            tries,
            staging / ACCURACY_PLOT,
            ctx.budget.limit if config.validate.enabled else None,
            metric=ctx.metric,
        ),
        layer_sparsity(layer_rows, staging / SPARSITY_PLOT),
        latency(artifacts, staging / LATENCY_PLOT),
    ]
    drawn += [staging / p for o in outputs for p in o.plots]  # the steps' own (the MC reliability diagram)
    model_summary = {
        "name": model.name,
        "input_shape": list(model.input_shape[1:]),
        "layers": [type(l).__name__ for l in original.layers],
        "pipeline": config.summary(ctx.task),
        "task": ctx.task.value,
        "output": ctx.kind.value,
    }
    assumed = assumption(model)  # a custom MCDropout read as Dropout, said in the report as on the command line
    if assumed:
        model_summary["assumed"] = assumed
    sized = sizing(model)  # a text model's length taken from the data, said in the report as on the command line
    if sized:
        model_summary["sized_from_data"] = sized
    flat = flattened(model)  # nested models read as one graph, augmentation removed: said as on the command line
    if flat:
        model_summary["flattened"] = flat
    report = build_report(
        config=config,
        task=ctx.task,
        data_summary=ctx.data.summary(),
        model_summary=model_summary,
        original=ctx.original_figures,
        final=ctx.figures,
        steps=records,
        artifacts=artifacts,
        tries=tries,
        layer_sparsity=layer_rows,
        mc=mc,
        plots=[p.name for p in drawn],
        seconds=time.perf_counter() - start,
        version=version,
        resolution=resolution,
    )
    if assumed:
        report["notes"] = [assumed, *report["notes"]]
    report["notes"] = [*flat, *sized, *report["notes"]]
    if recommendation is not None:  # what each objective recommends, and the times it was decided on
        report["objective"] = to_jsonable(recommendation)
        report["notes"] = merged_notes(report["notes"], recommendation)
    report["split_check"] = splits[0]
    report["notes"] = [*splits[1], *report["notes"]]
    if ctx.plan is not None:  # what the run planned, and what it measured (the time budget's account)
        report["plan"] = ctx.plan.to_dict()
    for spec in STEPS:  # the steps' own sections of report.json (the fallback's)
        report = spec.add_report(report, records)
    report = _relative(report, staging)
    write_text(staging / REPORT_JSON, json.dumps(report, indent=2, allow_nan=False, default=str) + "\n")
    sections = [line for o in outputs for line in o.sections]
    write_text(staging / REPORT_MD, markdown(report, artifacts, records, tries, sections))
    write_text(staging / CONFIG_FILE, config.to_toml())
    say(f"done in {time.perf_counter() - start:.1f} s: {out}")
    return OptimizeResult(out, current, config, records, artifacts, tries, report)


def _failed(step: str, exc: Exception, staging: Path, out: Path) -> StepError:
    """One line naming the step and the figure that missed; the staging folder is about to be removed."""
    if isinstance(exc, ValidationError):
        what = f"{Path(exc.artifact).name} failed validation: " + "; ".join(map(str, exc.mismatches))
    else:
        what = str(exc).replace(f"{staging}{os.sep}", "")
    return StepError(f"step '{step}' failed: {what}; nothing was written to {out}", step=step)


def _relative(value: Any, staging: Path) -> Any:
    """Paths inside the staging folder as names relative to the output folder; NaN and inf as None (valid JSON)."""
    prefix = f"{staging}{os.sep}"
    if isinstance(value, dict):
        return {k: _relative(v, staging) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, staging) for v in value]
    if isinstance(value, str) and prefix in value:
        return value.replace(prefix, "")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
