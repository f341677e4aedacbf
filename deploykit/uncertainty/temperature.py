"""Post-hoc temperature scaling (Guo et al., 2017), fitted on the validation split and stored in the ONNX graph.

One scalar T divides the logits before the softmax: the predicted class never
changes, only the confidence. Fitting minimizes the validation NLL; the
probabilities a model exports are enough, since ``log p`` equals the logits up
to a per-row constant that the softmax ignores (softmax(log p / T) is exactly
softmax(z / T)).

Stored in the graph so any onnxruntime or Triton client gets calibrated
probabilities without deploykit code:

- deterministic model: a ``Div`` by T before the final ``Softmax`` (found
  through Q/DQ, Cast or Identity nodes after it); when the softmax is absent or
  fused, the ``probabilities`` output becomes ``Softmax(Log(p) / T)``;
- MC (or ensemble) model, ``Placement.PER_SAMPLE``: the ``Div`` goes before the
  graph's one per-sample ``Softmax``, so mean, std, entropy and mutual
  information all describe calibrated samples. ``Placement.MEAN``: ``mean``
  becomes ``Softmax(Log(mean) / T)`` and ``predictive_entropy`` its entropy;
  ``predicted_class`` is unchanged by construction, and ``std`` and
  ``mutual_information`` stay those of the raw samples (T rescales a mean, not
  the spread between samples). In an ensemble graph, ``PER_SAMPLE`` puts the
  same ``Div`` before each member's softmax (calibrated members, then their
  average). :func:`fit_mc_temperature` picks whichever placement has the
  lower validation NLL.

The fit is recorded in ``metadata_props`` under ``deploykit.temperature``
(JSON: temperature, placement, fitted_on, count, nll_before, nll_after).
"""

from __future__ import annotations

import enum
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.core.contract import OUTPUT_NAME, OUTPUT_NAMES, PREDICTION_NAME
from deploykit.core.contract import TEMPERATURE_KEY as METADATA_KEY
from deploykit.errors import DataError, UsageError
from deploykit.onnx.builder import GraphBuilder
from deploykit.onnx.graph_ops import get_prop, retarget, set_props, toposort
from deploykit.records import Record
from deploykit.uncertainty.calibration import (
    CalibrationReport,
    calibration,
    check_labels_and_probs,
    reliability_diagram,
)
from deploykit.uncertainty.ensemble import member_outputs

T_MIN, T_MAX = 0.05, 20.0  # search range: beyond it the model is broken rather than miscalibrated
_TOL = 1e-6  # golden-section stop on log T
# Between a softmax and the probabilities it gives: an MC graph reshapes its [T*N, C] softmax to [T, N, C]
_PASS_THROUGH = ("QuantizeLinear", "DequantizeLinear", "Identity", "Cast", "Reshape")


class Placement(enum.Enum):
    """Where the Div by T sits."""

    LOGITS = "logits"  # deterministic model: before its softmax
    PER_SAMPLE = "per_sample"  # MC: before the per-sample softmax
    MEAN = "mean"  # MC / ensemble: on the log of the averaged probabilities


@dataclass
class TemperatureFit(Record):
    """One fitted temperature and what it did to the NLL of the split it was fitted on."""

    temperature: float
    placement: Placement
    nll_before: float
    nll_after: float
    count: int
    fitted_on: str = "validation split"
    alternatives: dict[str, float] | None = None  # MC: validation NLL of each placement tried

    def metadata_value(self) -> str:
        return json.dumps(
            {
                "temperature": self.temperature,
                "placement": self.placement.value,
                "fitted_on": self.fitted_on,
                "count": self.count,
                "nll_before": self.nll_before,
                "nll_after": self.nll_after,
            }
        )


def scale_probs(probs, temperature: float) -> np.ndarray:
    """softmax(log p / T) over the last axis, in float64 (what the edited graph computes)."""
    logits = np.log(np.maximum(np.asarray(probs, np.float64), np.finfo(np.float32).tiny)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(y_val, probs_val, fitted_on: str = "validation split") -> TemperatureFit:
    """The T in [0.05, 20] minimizing the NLL of softmax(log p / T) on a labelled split."""
    y, p = check_labels_and_probs(y_val, probs_val)
    t, after = _minimize(lambda t: _nll(y, scale_probs(p, t)))
    return TemperatureFit(t, Placement.LOGITS, _nll(y, p), after, len(y), fitted_on)


def fit_mc_temperature(
    y_val,
    sample_probs_val,
    fitted_on: str = "validation split",
    placements: tuple[Placement, ...] = (Placement.PER_SAMPLE, Placement.MEAN),
) -> TemperatureFit:
    """Fit T per sample and on the mean of MC samples [T, N, C]; keep the placement with the lower NLL.

    ``sample_probs_val`` is the ``sample_probabilities`` output of an MC model
    exported with ``include_samples=True`` (or the members' probabilities of
    an ensemble, stacked).
    """
    s = np.asarray(sample_probs_val, np.float64)
    if s.ndim != 3:
        raise DataError(f"sample probabilities must have shape [T, N, C], got {list(s.shape)}")
    y, mean = check_labels_and_probs(y_val, s.mean(axis=0))
    if not placements or any(p is Placement.LOGITS for p in placements):
        raise UsageError("placements must be PER_SAMPLE and/or MEAN")
    fits = {}
    for placement in placements:
        f = (
            (lambda t: _nll(y, scale_probs(s, t).mean(axis=0)))
            if placement is Placement.PER_SAMPLE
            else (lambda t: _nll(y, scale_probs(mean, t)))
        )
        fits[placement] = _minimize(f)
    best = min(fits, key=lambda k: fits[k][1])
    t, after = fits[best]
    return TemperatureFit(
        t, best, _nll(y, mean), after, len(y), fitted_on, alternatives={k.value: v[1] for k, v in fits.items()}
    )


def scale_mc(sample_probs, fit: TemperatureFit) -> np.ndarray:
    """The calibrated MC mean [N, C] the edited graph outputs, from samples [T, N, C]."""
    s = np.asarray(sample_probs, np.float64)
    if fit.placement is Placement.PER_SAMPLE:
        return scale_probs(s, fit.temperature).mean(axis=0)
    return scale_probs(s.mean(axis=0), fit.temperature)


def _nll(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())


def _minimize(f) -> tuple[float, float]:
    """Golden-section search of f(T) over log T (the NLL is unimodal in T); returns (T, f(T))."""
    a, b = math.log(T_MIN), math.log(T_MAX)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(math.exp(c)), f(math.exp(d))
    while b - a > _TOL:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(math.exp(d))
    t = math.exp((a + b) / 2)
    return t, f(t)


# --- the graph edit -------------------------------------------------------------------------------


def apply_temperature(proto, fit: TemperatureFit, output: str = OUTPUT_NAME) -> None:
    """Store ``fit`` in a deterministic model (in place): Div by T before the softmax behind ``output``."""
    if fit.placement is not Placement.LOGITS:
        raise UsageError(f"a deterministic model takes a LOGITS temperature, got {fit.placement.value}")
    _refuse_twice(proto)
    ed = GraphBuilder.editing(proto, "temperature")
    ed.output_info(output)
    softmax = _softmax_behind(ed, output)
    if softmax is not None:
        softmax.input[0] = ed.op("Div", [softmax.input[0], ed.const(fit.temperature)])
    else:
        raw = ed.name("uncalibrated")
        retarget(ed.graph, output, raw)
        _softmax_of_log(ed, raw, fit.temperature, output)
    _finish(proto, fit)


def apply_mc_temperature(proto, fit: TemperatureFit) -> None:
    """Store ``fit`` in an MC Dropout or ensemble model (in place), as its placement says."""
    mean, entropy = "mean", "predictive_entropy"  # outputs of the contract, by name
    _refuse_twice(proto)
    ed = GraphBuilder.editing(proto, "temperature")
    for name in OUTPUT_NAMES:
        ed.output_info(name)
    if fit.placement is Placement.PER_SAMPLE:
        for softmax in _per_sample_softmaxes(ed):
            softmax.input[0] = ed.op("Div", [softmax.input[0], ed.const(fit.temperature)])
    elif fit.placement is Placement.MEAN:
        raw_mean, raw_entropy = ed.name("raw_mean"), ed.name("raw_entropy")
        retarget(ed.graph, mean, raw_mean)
        retarget(ed.graph, entropy, raw_entropy)
        calibrated = _softmax_of_log(ed, raw_mean, fit.temperature, mean)
        ed.op("Identity", [ed.entropy(calibrated, 1)], output=entropy)
    else:
        raise UsageError("an MC model takes a PER_SAMPLE or MEAN temperature, got logits")
    _finish(proto, fit)


def per_sample_placement(proto) -> bool:
    """Whether a per-sample temperature can be stored in this MC or ensemble model: one Softmax behind every
    member's probabilities (an ensemble), or exactly one Softmax (an MC model, applied to every sample)."""
    try:
        _per_sample_softmaxes(GraphBuilder.editing(proto, "temperature"))
    except UsageError:
        return False
    return True


def _per_sample_softmaxes(ed: GraphBuilder) -> list:
    """The Softmax nodes a per-sample temperature divides the input of, or a UsageError saying why there are none."""
    members = member_outputs(ed.proto)  # an ensemble: the same T before each member's softmax
    softmaxes = [_softmax_behind(ed, m) for m in members] or [n for n in ed.graph.node if n.op_type == "Softmax"]
    if None in softmaxes or (not members and len(softmaxes) != 1):
        found = f"{softmaxes.count(None)} member(s) without one" if members else f"{len(softmaxes)} Softmax nodes"
        raise UsageError(
            f"per-sample temperature needs one Softmax per sample (or member) probabilities, found "
            f"{found}; fit with placements=(Placement.MEAN,)"
        )
    return softmaxes


def read_temperature(proto) -> dict | None:
    """The ``deploykit.temperature`` entry of a model's metadata_props, or None."""
    raw = get_prop(proto, METADATA_KEY)
    return json.loads(raw) if raw else None


def write_with_temperature(src: str | os.PathLike, dst: str | os.PathLike, fit: TemperatureFit) -> Path:
    """Load an ONNX file, store ``fit`` in it (MC / ensemble or deterministic, by its outputs), save atomically."""
    import onnx

    from deploykit.atomic import atomic_path

    proto = onnx.load(str(src))
    outputs = {o.name for o in proto.graph.output}
    if "std" in outputs and "predictive_entropy" not in outputs or PREDICTION_NAME in outputs:
        raise UsageError(
            f"{Path(src).name} is a regression model: a temperature rescales class probabilities; "
            "calibrate its std with deploykit.uncertainty.regression.fit_std_scale instead"
        )
    if set(OUTPUT_NAMES) <= outputs:
        apply_mc_temperature(proto, fit)
    else:
        apply_temperature(proto, fit)
    with atomic_path(Path(dst)) as tmp:
        onnx.save(proto, str(tmp))
    return Path(dst)


def _softmax_behind(ed: GraphBuilder, tensor: str):
    node = ed.producer(tensor)
    while node is not None and node.op_type in _PASS_THROUGH:
        node = ed.producer(node.input[0])
    return node if node is not None and node.op_type == "Softmax" else None


def _softmax_of_log(ed: GraphBuilder, p: str, temperature: float, output: str) -> str:
    scaled = ed.op("Div", [ed.log_probs(p), ed.const(temperature)])
    return ed.op("Softmax", [scaled], output=output, axis=-1)


def _refuse_twice(proto) -> None:
    if read_temperature(proto) is not None:
        raise UsageError("this ONNX model already holds a temperature; scale the uncalibrated export instead")


def _finish(proto, fit: TemperatureFit) -> None:
    import onnx

    toposort(proto.graph)
    set_props(proto, {METADATA_KEY: fit.metadata_value()})
    onnx.checker.check_model(proto, full_check=True)


# --- the report -----------------------------------------------------------------------------------


@dataclass
class TemperatureReport(Record):
    """Calibration on a held-out split before and after the temperature."""

    fit: TemperatureFit
    before: CalibrationReport
    after: CalibrationReport


def temperature_report(
    y_test,
    probs_before,
    probs_after,
    fit: TemperatureFit,
    plot_path: str | os.PathLike | None = None,
    name: str = "model",
) -> TemperatureReport:
    """NLL, ECE, Brier before and after on a held-out split; both reliability diagrams side by side."""
    before, after = calibration(y_test, probs_before), calibration(y_test, probs_after)
    if plot_path is not None:
        reliability_diagram({f"{name}": before, f"{name}, T = {fit.temperature:.3f}": after}, plot_path)
    return TemperatureReport(fit, before, after)
