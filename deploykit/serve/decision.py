"""Selective prediction served as a decision: ``abstain`` per row and the threshold behind it.

A model written by ``deploykit.uncertainty.selective.add_abstain`` has an
``abstain`` output (bool [N]) and the ``deploykit.selective`` metadata (measure,
threshold, rule). The server answers ``abstain`` with every response and the
threshold with it, so a client never has to invent its own. A model with the
metadata but without the output (stripped by another tool) gets ``abstain``
computed here by the same rule from the model's own outputs; a model with the
output but without the metadata is served with ``abstain`` and no threshold
(the start-up line says so).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from deploykit.core.contract import ABSTAIN_OUTPUT, ABSTAIN_RULE, INTERVAL_Z, OUTPUT_NAME, SELECTIVE_KEY, Measure
from deploykit.errors import ModelLoadError

THRESHOLD_PARAMETER = "abstain_threshold"
MEASURE_PARAMETER = "abstain_measure"


@dataclass(frozen=True)
class Abstain:
    """How a served model decides to abstain: the stored threshold, and whether the server computes the output."""

    threshold: float | None  # None: the model has an `abstain` output but no deploykit.selective metadata
    measure: Measure | None
    record: dict | None  # the whole deploykit.selective entry (targets, validation coverage and accuracy)
    computed: bool  # the graph has no `abstain` output: the server applies the rule to the model's outputs

    def parameters(self) -> dict:
        """What a response (v2 parameters, each v1 prediction) carries besides ``abstain``."""
        if self.threshold is None:
            return {}
        return {THRESHOLD_PARAMETER: self.threshold, MEASURE_PARAMETER: self.measure.value}

    def metadata(self) -> dict:
        """The model-metadata ``parameters`` entries: the response's ones plus the stored record."""
        return {**self.parameters(), **({"selective": self.record} if self.record else {})}

    def summary(self) -> str:
        """For the start-up line."""
        if self.threshold is None:
            return f"abstain output without a threshold (no {SELECTIVE_KEY} metadata)"
        computed = " (computed by the server)" if self.computed else ""
        return f"abstains when {self.measure.value} > {self.threshold:.6g}{computed}"

    def compute(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """``abstain`` (bool [N]) from the model's outputs by the stored rule (measure > threshold)."""
        return _measure(self.measure, values) > self.threshold


def abstain_of(path, props: dict[str, str], outputs: list[str]) -> Abstain | None:
    """The model's abstain decision from its metadata_props and outputs; None if it has none."""
    raw = props.get(SELECTIVE_KEY)
    if raw is None:
        if ABSTAIN_OUTPUT not in outputs:
            return None
        return Abstain(None, None, None, computed=False)
    record = _record(path, raw)
    measure = Measure(record["measure"])
    computed = ABSTAIN_OUTPUT not in outputs
    if computed:
        _check_measurable(path, measure, outputs)
    return Abstain(float(record["threshold"]), measure, record, computed)


def _record(path, raw: str) -> dict:
    try:
        record = json.loads(raw)
        Measure(record["measure"])
        threshold = record["threshold"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"{path}: metadata {SELECTIVE_KEY} is not a selective threshold ({exc})") from None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ModelLoadError(f"{path}: metadata {SELECTIVE_KEY} has threshold {threshold!r}, expected a finite number")
    if record.get("rule", ABSTAIN_RULE) != ABSTAIN_RULE:
        raise ModelLoadError(
            f"{path}: metadata {SELECTIVE_KEY} has rule {record['rule']!r}; this server applies {ABSTAIN_RULE!r}"
        )
    return record


def _check_measurable(path, measure: Measure, outputs: list[str]) -> None:
    needs = {Measure.MUTUAL_INFORMATION: ["mutual_information"], Measure.INTERVAL_WIDTH: ["std"]}.get(
        measure, ["mean", OUTPUT_NAME]
    )
    if not any(n in outputs for n in needs):
        raise ModelLoadError(
            f"{path}: its {SELECTIVE_KEY} threshold is on {measure.value}, but it has no "
            f"{ABSTAIN_OUTPUT!r} output and none of {needs} to compute it from"
        )


def _measure(measure: Measure, values: dict[str, np.ndarray]) -> np.ndarray:
    """The measure per row, as ``add_abstain`` computes it in the graph (float32 outputs, natural log)."""
    if measure is Measure.MUTUAL_INFORMATION:
        return values["mutual_information"]
    if measure is Measure.INTERVAL_WIDTH:  # a regressor: the 95% interval's width, mean over the targets
        return 2 * INTERVAL_Z * values["std"].mean(axis=1)
    if measure is Measure.ENTROPY and "predictive_entropy" in values:
        return values["predictive_entropy"]
    probs = values["mean"] if "mean" in values else values[OUTPUT_NAME]
    if measure is Measure.MAX_PROB:
        return 1.0 - probs.max(axis=1)
    return -(probs * np.log(np.maximum(probs, np.finfo(probs.dtype).tiny))).sum(axis=1)
