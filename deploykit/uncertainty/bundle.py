"""``mc_bundle`` / ``ensemble_bundle``: the MC Dropout model (or deep ensemble) to ship and the figures that
say how far to trust it.

``mc_bundle`` is used by ``deploykit mc`` and by the ``optimize`` pipeline's MC step, so both ship
the same model and report the same figures; ``ensemble_bundle`` (``deploykit ensemble``) gives a deep
ensemble the same steps 2-5, its temperature fitted on every member's probabilities:

1. export the MC Dropout ONNX model (:func:`export_mc_onnx`, from an :class:`MCConfig`);
2. temperature (on by default): fit T on the validation split's MC samples, per sample or on the
   mean, whichever gives the lower validation NLL (:func:`fit_mc_temperature`; per sample only when
   the graph has its one per-sample Softmax), store it in the graph, and report the test split's
   NLL, ECE and Brier before and after with both reliability diagrams;
3. selective prediction (when a :class:`SelectiveTarget` is given): choose the predictive-entropy
   threshold on the validation split (after the temperature), add the ``abstain`` output, report the
   test split's coverage and the risk-coverage curves;
4. OOD (when OOD inputs are given): AUROC and FPR at 95% TPR of each measure, test split vs OOD;
5. deterministic vs MC comparison on the test split (:func:`compare`), carrying 2-4.

The graph edits are applied in this order to one file (each write atomic); the metadata keys of
each edit survive the others (see :func:`deploykit.export.metadata.write_metadata`).

A logits classifier goes the same way (its MC graph applies the softmax per sample; its deterministic
logits are turned into probabilities for the comparison). A regression :class:`Dataset` (``data.task``)
gives the regression version of each step (:mod:`deploykit.uncertainty.regression`): the std scale in
place of the temperature (same switch), the interval-width threshold (``target_rmse`` or
``target_coverage``), the interval width as the OOD measure, and a :class:`RegressionComparison`
(RMSE, Gaussian NLL, 90% / 95% interval coverage and width on the test split).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploykit.core.contract import OUTPUT_NAME, PREDICTION_NAME
from deploykit.core.task import Task
from deploykit.errors import DataError, UsageError
from deploykit.records import Record
from deploykit.uncertainty.compare import (
    DEEP_ENSEMBLE,
    MC_DROPOUT,
    ComparisonReport,
    RegressionComparison,
    SelectiveReport,
    compare,
)
from deploykit.uncertainty.conformal import ConformalConfig
from deploykit.uncertainty.conformal_step import check_conformal
from deploykit.uncertainty.ensemble import EnsembleRecord
from deploykit.uncertainty.mc_export import MCExportRecord, export_mc_onnx
from deploykit.uncertainty.mc_graph import MCConfig
from deploykit.uncertainty.measures import Measure, entropy, uncertainties
from deploykit.uncertainty.ood import check_ood
from deploykit.uncertainty.predictor import UncertaintyPredictor, UncertaintyResult
from deploykit.uncertainty.selective import SelectiveTarget

RELIABILITY_PLOT = "reliability.png"  # deterministic vs the shipped MC model
TEMPERATURE_PLOT = "temperature.png"  # the MC model before vs after its temperature
RISK_COVERAGE_PLOT = "risk_coverage.png"
SELECTIVE_MEASURE = Measure.ENTROPY  # works for every model and uses the whole distribution


@dataclass
class MCBundle(Record):
    """What :func:`mc_bundle` wrote: the export record and the comparison (with temperature, selective, OOD)."""

    export: MCExportRecord
    comparison: ComparisonReport | RegressionComparison
    predicted_class: np.ndarray = field(
        default=None, repr=False
    )  # the shipped model's, on the test split (regression: None)
    prediction: np.ndarray = field(default=None, repr=False)  # the shipped model's mean on the test split


_DEFAULT_MC_CONFIG = MCConfig()


def mc_bundle(
    model,
    data,
    path: str | os.PathLike,
    config: MCConfig = _DEFAULT_MC_CONFIG,
    *,
    temperature: bool = True,
    target: SelectiveTarget | None = None,
    ood: np.ndarray | None = None,
    conformal: ConformalConfig | float | None = None,
    deterministic: np.ndarray | None = None,
    metadata=None,
    batch_size: int = 256,
    say: Callable[[str], None] = lambda message: None,
) -> MCBundle:
    """Export the MC model of ``model`` to ``path`` and calibrate / threshold / evaluate it on ``data``.

    ``data`` is a :class:`deploykit.data.dataset.Dataset` (validation split: the fits; test split: the
    report). ``deterministic``: the model's test outputs when the caller has them (as
    :func:`deploykit.core.evaluate.outputs` gives them: probabilities, logits, or a regressor's predictions).
    ``conformal``: add the conformal outputs (prediction sets; a regressor's intervals), calibrated on the
    validation split (a ConformalConfig, or the coverage alone: ``conformal=0.9``). Plots go beside ``path``.
    """
    from deploykit.core.evaluate import main_outputs, outputs

    path = Path(path)
    if ood is not None:
        ood = check_ood(ood, data.x_test.shape[1:])
    if config.task is None:
        config = dataclasses.replace(config, task=data.task)
    _check_target(target, config.task)
    conformal = check_conformal(conformal, config.task is Task.REGRESSION)
    regression = config.task is Task.REGRESSION
    say(f"exporting the MC Dropout {'regression ' if regression else ''}model (T = {config.samples})")
    record = export_mc_onnx(
        model, path, config=config, metadata=metadata, **({} if regression else {"class_names": list(data.class_names)})
    )
    det = outputs(model, data.x_test) if deterministic is None else np.asarray(deterministic)
    det = main_outputs(det, record.output_kind)  # compare probabilities (of logits, of a binary head)
    figures = Figures(
        data, det, temperature=temperature, target=target, ood=ood, batch_size=batch_size, say=say, conformal=conformal
    )
    if regression:
        comparison, mc = _regression_figures(path, figures)
        return MCBundle(record, comparison, None, mc.mean)

    def val_samples():  # the same graph with its raw samples, for the per-sample fit
        with tempfile.TemporaryDirectory() as tmp:
            scratch = export_mc_onnx(
                model, Path(tmp) / "samples.onnx", config=dataclasses.replace(config, include_samples=True)
            )
            val = UncertaintyPredictor(scratch.path).predict(data.x_val, batch_size=batch_size)
            return val.sample_probabilities, _per_sample(scratch.path)

    comparison, mc = _classification_figures(path, figures, val_samples)
    return MCBundle(record, comparison, mc.predicted_class, mc.mean)


@dataclass
class EnsembleBundle(Record):
    """What :func:`ensemble_bundle` wrote: the ensemble's export record and its comparison (as :class:`MCBundle`)."""

    export: EnsembleRecord
    comparison: ComparisonReport | RegressionComparison
    predicted_class: np.ndarray = field(default=None, repr=False)
    prediction: np.ndarray = field(default=None, repr=False)


def ensemble_bundle(
    members: Sequence[str | os.PathLike],
    data,
    path: str | os.PathLike,
    *,
    temperature: bool = True,
    target: SelectiveTarget | None = None,
    ood: np.ndarray | None = None,
    conformal: ConformalConfig | float | None = None,
    deterministic: np.ndarray | None = None,
    batch_size: int = 256,
    say: Callable[[str], None] = lambda message: None,
) -> EnsembleBundle:
    """Write the deep ensemble of the ONNX ``members`` to ``path``, then calibrate / threshold / evaluate it on
    ``data`` as :func:`mc_bundle` does an MC model: the temperature (per member or on the mean, as the validation
    NLL prefers; a regressor: the std scale), the ``abstain`` threshold, OOD figures, and the comparison with
    ``deterministic`` (default: the first member's test outputs).
    """
    from deploykit.uncertainty.ensemble import export_ensemble_onnx

    path = Path(path)
    if ood is not None:
        ood = check_ood(ood, data.x_test.shape[1:])
    _check_target(target, data.task)
    conformal = check_conformal(conformal, data.task is Task.REGRESSION)
    say(f"writing the ensemble of {len(members)} members")
    names = None if data.task is Task.REGRESSION else list(data.class_names) or None
    record = export_ensemble_onnx(members, path, class_names=names)
    if record.task is not data.task:
        raise DataError(f"the ensemble members are {record.task.value} models, the data has {data.task.value} labels")
    det = _first_member(members[0], data.x_test, batch_size) if deterministic is None else np.asarray(deterministic)
    figures = Figures(
        data,
        det,
        temperature=temperature,
        target=target,
        ood=ood,
        batch_size=batch_size,
        say=say,
        method=DEEP_ENSEMBLE,
        conformal=conformal,
    )
    if data.task is Task.REGRESSION:
        comparison, result = _regression_figures(path, figures)
        return EnsembleBundle(record, comparison, None, result.mean)

    def val_samples():  # the same ensemble with every member's probabilities, for the per-member fit
        with tempfile.TemporaryDirectory() as tmp:
            scratch = export_ensemble_onnx(members, Path(tmp) / "members.onnx", include_members=True)
            val = UncertaintyPredictor(scratch.path).predict(data.x_val, batch_size=batch_size)
            return val.sample_probabilities, _per_sample(scratch.path)  # each member's (MC member's: sample's) softmax

    comparison, result = _classification_figures(path, figures, val_samples)
    return EnsembleBundle(record, comparison, result.predicted_class, result.mean)


def _first_member(member, x: np.ndarray, batch_size: int) -> np.ndarray:
    """A member's own test outputs: its probabilities (an MC member: its mean), or a regressor's prediction."""
    from deploykit.onnx.sessions import onnx_session

    session = onnx_session(member)
    names = [o.name for o in session.get_outputs()]
    output = next(
        n for n in (OUTPUT_NAME, "mean", PREDICTION_NAME, names[0]) if n in names
    )  # a logits member's: probabilities
    x = np.asarray(x, np.float32)
    return np.concatenate(
        [
            session.run([output], {session.get_inputs()[0].name: x[i : i + batch_size]})[0]
            for i in range(0, len(x), batch_size)
        ]
    )


@dataclass(frozen=True)
class Figures:
    """What the post-export steps of a bundle work from: the data, the baseline's test outputs and the options."""

    data: object  # a deploykit.data.dataset.Dataset
    deterministic: np.ndarray  # the baseline's test outputs: probabilities, or a regressor's predictions
    temperature: bool
    target: SelectiveTarget | None
    ood: np.ndarray | None
    batch_size: int
    say: Callable[[str], None]
    method: str = MC_DROPOUT
    conformal: ConformalConfig | None = None


def _classification_figures(path: Path, f: Figures, val_samples: Callable[[], tuple[np.ndarray, bool]]):
    """Temperature, selective threshold, OOD and comparison of the classifier written at ``path``."""
    data, folder = f.data, path.parent
    fitted = _store_temperature(path, data, val_samples, f.batch_size, f.say) if f.temperature else None
    f.say(f"predicting {len(data.x_test)} test instances with the {f.method} model")
    mc = UncertaintyPredictor(path).predict(data.x_test, batch_size=f.batch_size)
    plots, calibrated = [RELIABILITY_PLOT], None
    if fitted is not None:
        from deploykit.uncertainty.temperature import temperature_report

        fit, before = fitted
        calibrated = temperature_report(
            data.y_test, before.mean, mc.mean, fit, plot_path=folder / TEMPERATURE_PLOT, name=f.method
        )
        plots.append(TEMPERATURE_PLOT)
    selective = None
    if f.target is not None:
        selective = _selective(path, f, mc, folder / RISK_COVERAGE_PLOT)
        plots.append(RISK_COVERAGE_PLOT)
    sets = None
    if f.conformal is not None:
        from deploykit.uncertainty.conformal_step import COVERAGE_PLOT, conformal_sets

        val = UncertaintyPredictor(path).predict(data.x_val, batch_size=f.batch_size)
        sets = conformal_sets(path, f.conformal, data, val.mean, mc.mean, f.say, folder / COVERAGE_PLOT)
        plots.append(COVERAGE_PLOT)
    rows = None
    if f.ood is not None:
        from deploykit.uncertainty.ood import ood_report

        f.say(f"predicting {len(f.ood)} out-of-distribution instances")
        away = UncertaintyPredictor(path).predict(f.ood, batch_size=f.batch_size)
        rows = ood_report(
            uncertainties(mc.mean, mc.mutual_information), uncertainties(away.mean, away.mutual_information)
        )
    comparison = compare(data.y_test, f.deterministic, mc, plot_path=folder / RELIABILITY_PLOT, method=f.method)
    return dataclasses.replace(
        comparison, temperature=calibrated, selective=selective, ood=rows, plots=plots, conformal=sets
    ), mc


def _check_target(target: SelectiveTarget | None, task: Task) -> None:
    """Refuse a selective target of the other task before any work (nothing written)."""
    if target is None:
        return
    if task is Task.REGRESSION and target.target_accuracy is not None:
        raise UsageError("target_accuracy is a classification target; a regressor takes target_rmse or target_coverage")
    if task is Task.CLASSIFICATION and target.target_rmse is not None:
        raise UsageError("target_rmse is a regression target; a classifier takes target_accuracy or target_coverage")


def _regression_figures(path: Path, f: Figures):
    """Std scale, interval-width threshold, OOD and regression metrics of the regressor written at ``path``."""
    from deploykit.uncertainty.regression import interval_width, regression_metrics

    data, folder = f.data, path.parent
    scaled = _store_std_scale(data, path, f.batch_size, f.say) if f.temperature else None
    f.say(f"predicting {len(data.x_test)} test instances with the {f.method} model")
    mc = UncertaintyPredictor(path).predict(data.x_test, batch_size=f.batch_size)
    plots, selective, rows = [], None, None
    if f.target is not None:
        selective = _regression_selective(path, f, mc, folder / RISK_COVERAGE_PLOT)
        plots.append(RISK_COVERAGE_PLOT)
    bands = None
    if f.conformal is not None:
        from deploykit.uncertainty.conformal_step import conformal_intervals

        val = UncertaintyPredictor(path).predict(data.x_val, batch_size=f.batch_size)
        bands = conformal_intervals(path, f.conformal.coverage, data, val.mean, val.std, mc.mean, mc.std, f.say)
    if f.ood is not None:
        from deploykit.uncertainty.ood import ood_report

        f.say(f"predicting {len(f.ood)} out-of-distribution instances")
        away = UncertaintyPredictor(path).predict(f.ood, batch_size=f.batch_size)
        rows = ood_report(
            {Measure.INTERVAL_WIDTH: interval_width(mc.std)}, {Measure.INTERVAL_WIDTH: interval_width(away.std)}
        )
    det = f.deterministic
    deterministic_report = regression_metrics(data.y_test, det, np.zeros_like(det, dtype=np.float64))
    comparison = RegressionComparison(
        count=len(data.x_test),
        samples=mc.samples,
        deterministic_rmse=deterministic_report.rmse,
        deterministic_mae=deterministic_report.mae,
        mc=regression_metrics(data.y_test, mc.mean, mc.std),
        std_scale=scaled,
        selective=selective,
        ood=rows,
        plots=plots,
        method=f.method,
        conformal=bands,
    )
    return comparison, mc


def _store_std_scale(data, path: Path, batch_size: int, say):
    """Fit the std scale on the validation split, store it in ``path``; the test split's metrics before / after."""
    from deploykit.uncertainty.generalises import check_std_scale
    from deploykit.uncertainty.regression import StdScaleReport, fit_std_scale, regression_metrics, write_with_std_scale

    if len(data.x_val) == 0:
        raise DataError("the std scale needs a validation split; give data with one or switch it off")
    say(f"fitting the std scale on {len(data.x_val)} validation instances")
    predictor = UncertaintyPredictor(path)
    val = predictor.predict(data.x_val, batch_size=batch_size)
    fit = fit_std_scale(data.y_val, val.mean, val.std)
    decision = check_std_scale(data.y_val, val.mean, val.std)  # kept only when it generalises, else std x 1
    if not decision.kept:
        fit = dataclasses.replace(fit, std_scale=1.0, nll_after=fit.nll_before)
    before = predictor.predict(data.x_test, batch_size=batch_size)
    write_with_std_scale(path, path, fit)
    after = UncertaintyPredictor(path).predict(data.x_test, batch_size=batch_size)
    say(f"  {decision.line()}")
    return StdScaleReport(
        fit,
        regression_metrics(data.y_test, before.mean, before.std),
        regression_metrics(data.y_test, after.mean, after.std),
    )


def _regression_selective(path: Path, f: Figures, mc: UncertaintyResult, plot: Path) -> SelectiveReport:
    """The interval-width threshold chosen on the validation split, stored as ``abstain``, measured on the test
    split."""
    import onnx

    from deploykit.atomic import atomic_path
    from deploykit.uncertainty.regression import interval_width
    from deploykit.uncertainty.selective import (
        add_abstain,
        apply_regression_threshold,
        choose_regression_threshold,
        regression_risk_coverage,
        risk_coverage_plot,
    )

    data, target = f.data, f.target
    val = UncertaintyPredictor(path).predict(data.x_val, batch_size=f.batch_size)
    chosen = choose_regression_threshold(data.y_val, val.mean, interval_width(val.std), target)
    proto = onnx.load(str(path))
    add_abstain(proto, chosen)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    width = interval_width(mc.std)
    test = apply_regression_threshold(data.y_test, mc.mean, width, chosen.threshold)
    f.say(
        f"  abstain when {chosen.measure.value} > {chosen.threshold:.4g}: test coverage {test.coverage:.1%}, "
        f"RMSE of kept {test.rmse:.4g}"
    )
    risk_coverage_plot(
        {f"{f.method} (95% interval width)": regression_risk_coverage(data.y_test, mc.mean, width)},
        plot,
        target_rmse=target.target_rmse,
    )
    return SelectiveReport(chosen, test)


def _store_temperature(path: Path, data, val_samples, batch_size: int, say):
    """Fit the temperature on the validation split's samples (``val_samples()``: [T, N, C] and whether each sample
    has its own softmax, for the per-sample placement) and store it in ``path``; returns (fit, raw test predictions)."""
    from deploykit.uncertainty.generalises import check_mc_temperature
    from deploykit.uncertainty.temperature import Placement, fit_mc_temperature, write_with_temperature

    say(f"fitting the temperature on {len(data.x_val)} validation instances")
    if len(data.x_val) == 0:
        raise DataError("temperature scaling needs a validation split; give data with one or switch it off")
    samples, per_sample = val_samples()
    placements = (Placement.PER_SAMPLE, Placement.MEAN) if per_sample else (Placement.MEAN,)
    fit = fit_mc_temperature(data.y_val, samples, placements=placements)
    decision = check_mc_temperature(data.y_val, samples, fit.placement)  # kept only when it generalises, else T = 1
    if not decision.kept:
        fit = dataclasses.replace(fit, temperature=1.0, nll_after=fit.nll_before)
    before = UncertaintyPredictor(path).predict(data.x_test, batch_size=batch_size)
    write_with_temperature(path, path, fit)
    say(f"  {decision.line()} ({fit.placement.value})")
    return fit, before


def _selective(path: Path, f: Figures, mc: UncertaintyResult, plot: Path) -> SelectiveReport:
    """Choose the threshold on the validation split, add ``abstain`` to the graph, measure it on the test split."""
    import onnx

    from deploykit.atomic import atomic_path
    from deploykit.uncertainty.selective import (
        add_abstain,
        apply_threshold,
        choose_threshold,
        risk_coverage,
        risk_coverage_plot,
    )

    data, det = f.data, f.deterministic
    val = UncertaintyPredictor(path).predict(data.x_val, batch_size=f.batch_size)
    chosen = choose_threshold(data.y_val, val.predicted_class, val.predictive_entropy, SELECTIVE_MEASURE, f.target)
    proto = onnx.load(str(path))
    add_abstain(proto, chosen)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    test = apply_threshold(data.y_test, mc.predicted_class, mc.predictive_entropy, chosen.threshold)
    f.say(f"  abstain when {chosen.measure.value} > {chosen.threshold:.4g}: test coverage {test.coverage:.1%}")
    risk_coverage_plot(
        {
            f"{f.method} (predictive entropy)": risk_coverage(data.y_test, mc.predicted_class, mc.predictive_entropy),
            "deterministic (entropy)": risk_coverage(data.y_test, det.argmax(1), entropy(det)),
        },
        plot,
        target_accuracy=f.target.target_accuracy,
    )
    return SelectiveReport(chosen, test)


def _per_sample(path: Path) -> bool:
    import onnx

    from deploykit.uncertainty.temperature import per_sample_placement

    return per_sample_placement(onnx.load(str(path)))
