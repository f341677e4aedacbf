"""``UncertaintyPredictor``: run an MC Dropout (or deep-ensemble) ONNX model with onnxruntime.

A classifier's model (softmax or logits) gives probabilities and the entropy measures; a
regressor's gives ``mean`` and ``std`` per target (the classifier-only fields are None).

One onnxruntime session per predictor; ``InferenceSession.run`` is
thread-safe and the predictor keeps no per-call state, so one predictor may
serve concurrent ``predict`` calls from several threads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from deploykit.configs import is_int
from deploykit.core.contract import (
    ENSEMBLE_KEY,
    KIND_ENSEMBLE,
    KIND_MC_DROPOUT,
    MEMBER_PREDICTIONS_OUTPUT,
    MEMBERS_OUTPUT,
    SAMPLE_FIRST_OUTPUTS,
    check_outputs,
    declared_outputs,
    file_task,
    outputs_of,
)
from deploykit.core.task import Task
from deploykit.errors import DataError, ModelLoadError, UsageError
from deploykit.export.convert import INPUT_NAME
from deploykit.export.metadata import read_metadata
from deploykit.uncertainty.mc_graph import DEFAULT_MAX_SAMPLES, SAMPLES_NAME


@dataclass(frozen=True)
class UncertaintyResult:
    """Per-instance MC Dropout outputs (N instances, C classes or K regression targets, T samples)."""

    mean: np.ndarray  # [N, C] mean probabilities (regression: [N, K] mean predictions)
    std: np.ndarray  # [N, C or K] standard deviation over the samples
    predictive_entropy: np.ndarray | None  # [N] entropy of the mean (nats); None for a regressor
    mutual_information: np.ndarray | None  # [N] predictive entropy minus the mean entropy of the samples; None too
    predicted_class: np.ndarray | None  # [N] int64, argmax of the mean; None too
    samples: int  # T (a deep ensemble: its K members)
    sample_probabilities: np.ndarray | None = None  # [T, N, C] when the model outputs them (an ensemble: its members')
    sample_predictions: np.ndarray | None = None  # regression: [T, N, K] when the model outputs them (or members')
    task: Task = Task.CLASSIFICATION
    abstain: np.ndarray | None = None  # [N] bool, true where the model declines to decide (a model with a threshold)
    prediction_set: np.ndarray | None = None  # [N, C] bool: the conformal prediction set (a model calibrated for one)
    set_size: np.ndarray | None = None  # [N] int64: how many classes it holds
    lower: np.ndarray | None = None  # regression: [N, K] the conformal interval's lower end
    upper: np.ndarray | None = None  # regression: [N, K] its upper end
    #: every output the model served, by its contract name (deploykit.core.contract.OUTPUTS): a newer output without a
    #: field of its own is read here, or as an attribute of its name
    outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __getattr__(self, name: str):
        """An output the model served that has no field of its own (one the contract added later)."""
        outputs = self.__dict__.get("outputs") or {}
        if name in outputs:
            return outputs[name]
        raise AttributeError(f"{type(self).__name__} has no field or output {name!r}")

    @property
    def entropy(self) -> np.ndarray:
        """Alias of ``predictive_entropy``."""
        return self.predictive_entropy


#: Outputs read into a field named otherwise: an ensemble's members fill the samples' fields.
_FIELD_OF = {MEMBERS_OUTPUT: "sample_probabilities", MEMBER_PREDICTIONS_OUTPUT: "sample_predictions"}


def _result_fields(values: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """The :class:`UncertaintyResult` fields of the served outputs (the first output for a field wins)."""
    names = {f.name for f in fields(UncertaintyResult)} - {"outputs", "samples", "task"}
    found: dict[str, np.ndarray | None] = {}
    for name, value in values.items():
        if _FIELD_OF.get(name, name) in names:
            found.setdefault(_FIELD_OF.get(name, name), value)
    return {**dict.fromkeys(names), **found}  # the file lacks the rest: None


class UncertaintyPredictor:
    """Loads an MC Dropout ONNX model (from ``export_mc_onnx``) or a deep ensemble (from ``export_ensemble_onnx``)
    and predicts with uncertainty. An ensemble has no ``samples`` input: its K members are fixed (``samples``
    in the result), and ``predict(samples=...)`` is refused.

    ``threads`` sets onnxruntime's intra-op threads (None: onnxruntime's
    default); ``session_options`` (an ``onnxruntime.SessionOptions``) and
    ``providers`` are passed to the session as they are (``threads`` is applied
    to the options given).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, *, session_options=None, providers=None):
        from deploykit.onnx.sessions import onnx_session

        path = Path(path)
        if threads is not None and (not is_int(threads) or threads < 1):
            raise UsageError(f"threads must be an integer >= 1, got {threads!r}")
        self.session = onnx_session(
            path, threads=threads, what="MC model ", providers=providers, options=session_options
        )
        self.path = path
        self.metadata = read_metadata(self.session)
        declared = declared_outputs(self.session.get_outputs())
        self.task = Task(file_task(self.metadata.task, list(declared)))
        if self.metadata.kind not in (KIND_MC_DROPOUT, KIND_ENSEMBLE):
            raise ModelLoadError(
                f"MC model {path}: not an MC Dropout model or deep ensemble (kind "
                f"{self.metadata.kind!r}); export one with deploykit mc or deploykit ensemble"
            )
        check_outputs(f"MC model {path}", declared, self.metadata.kind, self.task)  # before any value is read
        self.is_ensemble = self.metadata.kind == KIND_ENSEMBLE
        self.input_shape = tuple(int(d) for d in self.session.get_inputs()[0].shape[1:])
        from deploykit.core.multi_io import artifact_layout

        self._layout = artifact_layout(
            {i.name: tuple(i.shape[1:]) for i in self.session.get_inputs() if i.type == "tensor(float)"}, {}
        )  # several inputs: packed by name order
        if self._layout is not None:
            self.input_shape = (self._layout.input_size,)
        if self.is_ensemble:
            self.default_samples = self.max_samples = self._members()
        else:
            self.default_samples = int(self.metadata.default_samples or 0)
            self.max_samples = int(self.metadata.max_samples or DEFAULT_MAX_SAMPLES)
        self.class_names = tuple(self.metadata.class_names)
        # the required outputs, then every optional one the file has (an older file: fewer), in the table's order;
        # outputs the table does not list are not read
        listed = outputs_of(self.metadata.kind, self.task)
        required = outputs_of(self.metadata.kind, self.task, required=True)
        self._outputs = [*required, *(n for n in listed if n in declared and n not in required)]

    def _members(self) -> int:
        """K, from the ensemble's ``deploykit.ensemble`` metadata (0 when it is missing)."""
        raw = dict(self.session.get_modelmeta().custom_metadata_map).get(ENSEMBLE_KEY)
        try:
            return len(json.loads(raw)["members"]) if raw else 0
        except (ValueError, KeyError, TypeError):
            raise ModelLoadError(f"ensemble {self.path}: unreadable {ENSEMBLE_KEY} metadata {raw!r}") from None

    def predict(self, x, samples: int | None = None, batch_size: int | None = None) -> UncertaintyResult:
        """MC Dropout prediction for a batch ``x`` of shape [N, *input_shape].

        ``batch_size`` splits ``x`` into calls of at most that many rows (each
        call runs batch_size * T rows at once; bounds the memory).
        """
        x = self._check_input(x)
        if samples is not None and self.is_ensemble:
            raise UsageError(
                f"{self.path.name} is a deep ensemble of {self.max_samples or 'K'} members: samples does not "
                "apply (omit it)"
            )
        feed = {} if samples is None else {SAMPLES_NAME: np.array(self._check_samples(samples), dtype=np.int64)}
        if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
            raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        step = batch_size or len(x)
        parts = [
            self.session.run(self._outputs, {**feed, **self._inputs(x[i : i + step])}) for i in range(0, len(x), step)
        ]
        values = (
            dict(zip(self._outputs, parts[0]))
            if len(parts) == 1
            else {  # one call: no copies
                name: np.concatenate([p[k] for p in parts], axis=1 if name in SAMPLE_FIRST_OUTPUTS else 0)
                for k, name in enumerate(self._outputs)
            }
        )
        return UncertaintyResult(
            samples=int(samples if samples is not None else self.default_samples),
            task=self.task,
            outputs=values,
            **_result_fields(values),
        )

    def _check_samples(self, samples) -> int:
        if not is_int(samples):
            raise UsageError(f"samples must be an integer, got {samples!r}")
        if not 1 <= samples <= self.max_samples:
            raise UsageError(f"samples must be between 1 and {self.max_samples} (this model's limit), got {samples}")
        return int(samples)

    def _inputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The feed of a batch: ``input``, or one array per model input (deploykit.core.multi_io) split from the packed
        rows."""
        return {INPUT_NAME: x} if self._layout is None else self._layout.split_inputs(x)

    def _check_input(self, x) -> np.ndarray:
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise DataError(f"input must hold real numbers (float32 expected), got dtype {arr.dtype}")
        want = ("N", *self.input_shape)
        if arr.ndim != len(want) or tuple(arr.shape[1:]) != self.input_shape:
            hint = " (a single instance? pass x[None])" if tuple(arr.shape) == self.input_shape else ""
            raise DataError(f"input must have shape {list(want)}, got {list(arr.shape)}{hint}")
        if arr.shape[0] == 0:
            raise DataError("input holds no instances (batch of 0 rows)")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise DataError(f"input holds {int((~np.isfinite(arr)).sum())} NaN or inf values")
        return np.ascontiguousarray(arr)
