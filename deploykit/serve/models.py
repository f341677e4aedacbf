"""kserve models that run deploykit ONNX files in onnxruntime: deterministic, MC Dropout and deep ensembles.

:func:`open_model` reads the kind from the file's deploykit metadata
(``deploykit.export.metadata``) and returns the matching model; the tensor
names are :mod:`deploykit.core.contract`'s. A model with a selective threshold
answers ``abstain`` per row and the threshold (:mod:`deploykit.serve.decision`). One
onnxruntime session per model; ``InferenceSession.run`` is thread-safe.
Every call runs in the model's own threads under the server's request timeout
(:mod:`deploykit.serve.deadline`), so a slow model never holds the event loop.
Each request's work (rows x samples) and response size (numbers sent) are
bounded before anything runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.core.contract import (
    ABSTAIN_OUTPUT,
    CONFORMAL_KEY,
    ENSEMBLE_KEY,
    INPUT_NAME,
    OUTPUT_COLUMNS_KEY,
    PER_SAMPLE_OUTPUTS,
    SAMPLE_FIRST_OUTPUTS,
    SAMPLES_NAME,
    STD_SCALE_KEY,
    TASK_KEY,
    TEMPERATURE_KEY,
    ModelKind,
    check_outputs,
    declared_outputs,
    description,
    file_task,
    spec,
)
from deploykit.core.task import Task
from deploykit.errors import DeployKitError, ModelLoadError, UsageError
from deploykit.export.metadata import read_metadata
from deploykit.serve import limits, named_inputs
from deploykit.serve._kserve import InferOutput, InferRequest, InferResponse, InvalidInput, Model, from_np_dtype
from deploykit.serve.config import ServeConfig
from deploykit.serve.deadline import DeadlineSession, InferencePool, RequestTimeout
from deploykit.serve.decision import abstain_of

#: Triton's classification extension: the requested output's parameter naming how many top classes to return.
CLASSIFICATION = "classification"

#: Responses with more numbers than this are built in a worker thread.
INLINE_VALUES = 65536
#: An MC request is split into onnxruntime calls of at most this many network rows (bounds the memory).
MC_ROWS_PER_CALL = 65536

_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(double)": "FP64",
    "tensor(bool)": "BOOL",
}


@dataclass(frozen=True)
class ServedOutput:
    """An output the server adds to the graph's (``abstain`` computed from the metadata), shaped like a NodeArg."""

    name: str
    type: str
    shape: list


def open_model(name: str, path: str | os.PathLike, config: ServeConfig) -> OnnxModel:
    """Load ``path`` in onnxruntime and wrap it as the model its metadata says (deterministic, MC or ensemble)."""
    session = DeadlineSession(_session(Path(path), config.threads))
    kind = read_metadata(session).kind
    cls = {ModelKind.MC_DROPOUT: MCDropoutModel, ModelKind.DEEP_ENSEMBLE: EnsembleModel}.get(kind, DeterministicModel)
    return cls(name, Path(path), session, config)


def _session(path: Path, threads: int | None):
    from deploykit.onnx.sessions import onnx_session

    return onnx_session(path, threads=threads, allow_spinning=False)  # idle threads must not burn shared CPUs


def _v1_predictions(values: dict[str, np.ndarray], rows: int, extra: dict) -> list:
    """v1 predictions: one list per row (one output), or one object of outputs (and ``extra``) per row."""
    if len(values) == 1 and not extra:
        return next(iter(values.values())).tolist()
    per_output = {name: np.moveaxis(v, 1, 0) if name in SAMPLE_FIRST_OUTPUTS else v for name, v in values.items()}
    return [{**{name: v[i].tolist() for name, v in per_output.items()}, **extra} for i in range(rows)]


def _row_size(arg) -> int:
    """Numbers per row of an output: its fixed dims except the batch axis (the second of a samples-first
    output); 1 for a dynamic one (the sample axis of ``sample_probabilities``: the request's ``samples``)."""
    dims = [d for axis, d in enumerate(arg.shape) if axis != (1 if arg.name in SAMPLE_FIRST_OUTPUTS else 0)]
    return int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in dims], dtype=np.int64))


def _json_props(props: dict[str, str], path: Path) -> dict:
    """The JSON entries of the model's metadata_props the server reports as they are (temperature, ensemble)."""
    found = {}
    for key in (TEMPERATURE_KEY, ENSEMBLE_KEY, STD_SCALE_KEY, TASK_KEY, CONFORMAL_KEY, OUTPUT_COLUMNS_KEY):
        if key in props:
            try:
                found[key] = json.loads(props[key])
            except ValueError:
                raise ModelLoadError(f"{path}: metadata {key} is not JSON") from None
    return found


def _task(props: dict, outputs: list[str]) -> Task:
    """What a served model predicts: its ``deploykit.task`` entry, else its outputs (:func:`contract.file_task`)."""
    return Task(file_task(props.get(TASK_KEY), outputs))


def _class_output(output, task: Task, kind: ModelKind, labels: list[str]) -> bool:
    """Whether Triton's classification extension applies: an output of one float per class (the contract's
    [N, classes] outputs; one the contract does not list: any [N, W] float output of a classifier)."""
    if task is not Task.CLASSIFICATION or len(output.shape) != 2 or output.type != "tensor(float)":
        return False
    row = spec(output.name, task, kind)
    if row is None:
        return output.name not in SAMPLE_FIRST_OUTPUTS and _per_class(output, labels)
    return row.shape[-1] in ("classes", "units") and _per_class(output, labels)


def _per_class(output, labels: list[str]) -> bool:
    """Whether an [N, W] output has one column per class label (a binary model's one-column logit has not)."""
    width = output.shape[1]
    return not labels or not isinstance(width, int) or width == len(labels)


def _tensor_meta(arg) -> dict:
    dims = [d if isinstance(d, int) else -1 for d in arg.shape]
    return {"name": arg.name, "datatype": _DATATYPES.get(arg.type, arg.type), "shape": dims}


class OnnxModel(Model):
    """A deploykit ONNX model served over KServe v1 and v2 (Open Inference Protocol)."""

    several_inputs: list | None = (
        None  # a model with several inputs (deploykit.core.multi_io): one tensor each, by name
    )

    def __init__(self, name: str, path: Path, session, config: ServeConfig):
        super().__init__(name)
        self.path = path
        self.session = session
        self.config = config
        self.metadata = read_metadata(session)
        self.input = self._model_input(session.get_inputs())
        for tensor in self.several_inputs or [self.input]:
            if not all(isinstance(d, int) and d > 0 for d in tensor.shape[1:]):
                raise ModelLoadError(
                    f"{path}: input '{tensor.name}' needs fixed sizes after the batch axis, got {tensor.shape}"
                )
        self.input_shape = tuple(self.input.shape[1:])
        self.graph_outputs = [o.name for o in session.get_outputs()]  # what onnxruntime runs
        props = dict(session.get_modelmeta().custom_metadata_map)
        self.abstain = abstain_of(path, props, self.graph_outputs)
        computed = self.abstain is not None and self.abstain.computed
        added = [ServedOutput(ABSTAIN_OUTPUT, "tensor(bool)", ["N"])] if computed else []
        self.outputs = [*session.get_outputs(), *added]
        self.output_names = [o.name for o in self.outputs]  # what the server answers
        self.output_sizes = {o.name: _row_size(o) for o in self.outputs}
        self.props = _json_props(props, path)
        self.task = _task(self.props, self.graph_outputs)
        self.kind = ModelKind(self.metadata.kind) if self.metadata.kind in set(ModelKind) else ModelKind.DETERMINISTIC
        # the contract's outputs must have its dtypes and ranks (before any request); a required one missing is
        # checked by the kinds that need them (MC, ensemble); outputs it does not list are served as they are
        check_outputs(str(path), declared_outputs(session.get_outputs()), self.kind, self.task, required=False)
        self.class_labels = [str(c) for c in self.metadata.class_names]
        # [N, classes] float: classification applies (not to a regressor, nor to a binary model's one logit)
        self.class_outputs = {o.name for o in self.outputs if _class_output(o, self.task, self.kind, self.class_labels)}
        self.ready = True
        self._pool: InferencePool | None = None

    @property
    def pool(self) -> InferencePool:
        """The model's inference threads (started on first use)."""
        if self._pool is None:
            self._pool = InferencePool(self.name, self.config.request_timeout)
        return self._pool

    def _model_input(self, inputs):
        if len(inputs) > 1 and all(i.type == "tensor(float)" for i in inputs):  # one per model input, by name
            self.several_inputs = list(inputs)
            return inputs[0]
        if len(inputs) != 1 or inputs[0].type != "tensor(float)":
            raise ModelLoadError(f"{self.path}: expected one float32 input, got {[(i.name, i.type) for i in inputs]}")
        return inputs[0]

    def get_input_types(self) -> list[dict]:
        return [_tensor_meta(i) for i in self.several_inputs or [self.input]]

    def get_output_types(self) -> list[dict]:
        """Each output's name, datatype and shape, and its contract description (outputs it lists)."""
        described = [(o, description(o.name, self.task, self.kind)) for o in self.outputs]
        return [{**_tensor_meta(o), "parameters": {"description": d}} if d else _tensor_meta(o) for o, d in described]

    def metadata_parameters(self) -> dict:
        """The model-level ``parameters`` of ``/v2/models/NAME``: kind, class labels, samples, abstain, temperature."""
        temperature, std_scale = self.props.get(TEMPERATURE_KEY), self.props.get(STD_SCALE_KEY)
        conformal = self.props.get(CONFORMAL_KEY)  # how prediction_set / lower / upper were calibrated
        entry = self.props.get(TASK_KEY)
        output = entry.get("output") if isinstance(entry, dict) else None  # probabilities, logits, sigmoid, values...
        return {
            "kind": str(self.metadata.kind),
            "task": self.task.value,
            **({"output": output} if output else {}),
            "class_labels": self.class_labels,
            **(self.abstain.metadata() if self.abstain else {}),
            **({"temperature": temperature} if temperature is not None else {}),
            **({"std_scale": std_scale} if std_scale is not None else {}),
            **({"conformal": conformal} if conformal is not None else {}),
            **({"output_columns": self.props[OUTPUT_COLUMNS_KEY]} if OUTPUT_COLUMNS_KEY in self.props else {}),
        }

    def summary(self) -> str:
        """What the start-up line says about the model."""
        return self._kind_summary() + (f", {self.abstain.summary()}" if self.abstain else "")

    def _kind_summary(self) -> str:
        return "deterministic"

    def _decision(self) -> dict:
        """The abstain threshold and measure a response carries (empty without a selective threshold)."""
        return self.abstain.parameters() if self.abstain else {}

    async def predict(self, payload, headers=None, response_headers=None):
        """v2: an ``InferRequest`` -> ``InferResponse``; v1: ``{"instances": [...]}`` -> ``{"predictions": [...]}``."""
        try:
            if isinstance(payload, InferRequest):
                return await self._predict_v2(payload)
            return await self._predict_v1(payload)
        except RequestTimeout:
            raise
        except DeployKitError as exc:
            raise InvalidInput(str(exc)) from None

    async def explain(self, payload, headers=None):
        raise InvalidInput(f"model '{self.name}' has no explainer; use :predict or /infer")

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        parameters = limits.check_parameters(request.parameters)
        self._check_requested_outputs(request.request_outputs)
        if request.id is not None and not isinstance(request.id, str):
            raise limits.RequestError(f"'id' must be a string, got {type(request.id).__name__}")
        samples, note = self._samples(parameters)
        if self.several_inputs:
            x = named_inputs.v2_inputs(request.inputs, self.several_inputs, self.config.max_rows)
        else:
            x = limits.v2_input(request.inputs, self.input.name, self.input_shape, self.config.max_rows)
        requested = [o.name for o in request.request_outputs or []] or self.output_names
        self._check_work(named_inputs.rows(x), samples, requested)
        values = await self._infer(x, samples)
        top = {
            o.name: o.parameters[CLASSIFICATION]
            for o in request.request_outputs or []
            if (o.parameters or {}).get(CLASSIFICATION) is not None
        }
        outputs = [self._output(name, v, top.get(name)) for name, v in values.items()]
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            parameters={**(self._response_parameters(samples, note) or {}), **self._decision()} or None,
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )

    def _output(self, name: str, value: np.ndarray, top: int | None) -> InferOutput:
        if top is None:
            return InferOutput(name, list(value.shape), from_np_dtype(value.dtype), data=value)
        labels = limits.classify(value, top, self.class_labels)
        return InferOutput(name, list(labels.shape), "BYTES", data=labels)

    async def _predict_v1(self, payload) -> dict:
        if self.several_inputs:
            x = named_inputs.v1_inputs(payload, self.several_inputs, self.config.max_rows)
        else:
            x = limits.v1_instances(payload, self.input_shape, self.config.max_rows)
        samples, note = self._samples(limits.check_parameters(payload.get("parameters")))
        self._check_work(named_inputs.rows(x), samples, self.output_names)
        values = await self._infer(x, samples)
        extra = self._decision()
        if sum(v.size for v in values.values()) > INLINE_VALUES:  # building the lists takes a while: not on the loop
            predictions = await asyncio.to_thread(_v1_predictions, values, named_inputs.rows(x), extra)
        else:
            predictions = _v1_predictions(values, named_inputs.rows(x), extra)
        return {"predictions": predictions, **({"parameters": note} if note else {})}

    def _check_work(self, rows: int, samples: int | None, outputs: list[str]) -> None:
        """Refuse a request whose network rows (rows x samples) or response numbers exceed the limits."""
        network_rows = rows * (samples or 1)
        if network_rows > self.config.max_network_rows:
            raise limits.RequestError(
                f"{rows} rows x {samples} samples = {network_rows} network rows, more than the limit of "
                f"{self.config.max_network_rows} per request; send fewer rows or samples"
            )
        per_row = sum(self.output_sizes[n] * (samples if n in PER_SAMPLE_OUTPUTS else 1) for n in outputs)
        if rows * per_row > self.config.max_response_values:
            raise limits.RequestError(
                f"the response would hold {rows * per_row} numbers ({rows} rows x {per_row}), more than the limit "
                f"of {self.config.max_response_values}; send fewer rows or samples, or request fewer outputs"
            )

    def _check_requested_outputs(self, requested) -> None:
        for output in requested or []:
            if output.name not in self.output_names:
                raise limits.RequestError(
                    f"unknown output {limits.shown(output.name)}; model '{self.name}' has outputs {self.output_names}"
                )
            if output.parameters is not None and not isinstance(output.parameters, dict):
                raise limits.RequestError(f"'parameters' of output {limits.shown(output.name)} must be an object")
            top = (output.parameters or {}).get(CLASSIFICATION)
            if top is not None:
                limits.check_classification(
                    output.name, top, self.output_sizes[output.name], output.name in self.class_outputs
                )

    async def _infer(self, x: np.ndarray, samples: int | None) -> dict[str, np.ndarray]:
        return await self.pool.run(self._outputs, x, samples)

    def _outputs(self, x: np.ndarray, samples: int | None) -> dict[str, np.ndarray]:
        """Every served output: the graph's, and ``abstain`` when the server computes it."""
        values = self._run(x, samples)
        if self.abstain is not None and self.abstain.computed:
            values[ABSTAIN_OUTPUT] = self.abstain.compute(values)
        return values

    @abstractmethod
    def _samples(self, parameters: dict) -> tuple[int | None, dict | None]:
        """The number of MC samples a request asks for (None: not an MC model), and a note for the response."""

    @abstractmethod
    def _response_parameters(self, samples: int | None, note: dict | None) -> dict | None:
        """The ``parameters`` of a v2 response."""

    @abstractmethod
    def _run(self, x: np.ndarray, samples: int | None) -> dict[str, np.ndarray]:
        """Every graph output of the model for a checked batch, by name."""


class DeterministicModel(OnnxModel):
    """An exported model: input -> ``probabilities`` (a logits classifier: ``logits`` and ``probabilities``; a
    regressor: ``prediction``). Any single-float-input ONNX model works: every graph output is served."""

    def _samples(self, parameters: dict) -> tuple[None, dict | None]:
        """``samples`` is ignored (with a note), as Triton ignores parameters a model does not use."""
        return None, limits.ignored_samples(parameters, self.name)

    def _response_parameters(self, samples: None, note: dict | None) -> dict | None:
        return note

    def _run(self, x: np.ndarray, samples: None) -> dict[str, np.ndarray]:
        feed = named_inputs.feed(x, self.input.name)
        return dict(zip(self.graph_outputs, self.session.run(self.graph_outputs, feed), strict=True))


class EnsembleModel(DeterministicModel):
    """A deep ensemble from ``deploykit.uncertainty.ensemble``: the MC model's outputs from K members in one call.

    It has no ``samples`` input (the K members are fixed): ``samples`` is ignored with a note, as on a
    deterministic model; responses carry ``members`` where an MC model's carry ``samples``.
    """

    def __init__(self, name: str, path: Path, session, config: ServeConfig):
        super().__init__(name, path, session, config)
        _check_uncertainty_outputs(path, ModelKind.DEEP_ENSEMBLE, session.get_outputs(), self.task)
        self.members = len(self.props.get(ENSEMBLE_KEY, {}).get("members", [])) or None

    def _samples(self, parameters: dict) -> tuple[None, dict | None]:
        return None, limits.ignored_samples(parameters, self.name, "a deep ensemble")

    def _response_parameters(self, samples: None, note: dict | None) -> dict | None:
        return {**({"members": self.members} if self.members else {}), **(note or {})} or None

    def metadata_parameters(self) -> dict:
        return {**super().metadata_parameters(), **({"members": self.members} if self.members else {})}

    def _kind_summary(self) -> str:
        return f"deep ensemble of {self.members or '?'} members"


def _check_uncertainty_outputs(path: Path, kind: ModelKind, outputs, task: Task) -> None:
    """The outputs every file of this kind and task has (contract.OUTPUTS' required rows); optional ones may lack."""
    check_outputs(str(path), declared_outputs(outputs), kind, task)


class MCDropoutModel(OnnxModel):
    """An MC Dropout model from ``export_mc_onnx``: T dropout samples per call, reduced in the graph.

    ``samples`` comes from the request's parameters (default: the server's
    ``--samples``), limited by the server and by the model's own ``max_samples``.
    """

    def __init__(self, name: str, path: Path, session, config: ServeConfig):
        super().__init__(name, path, session, config)
        _check_uncertainty_outputs(path, ModelKind.MC_DROPOUT, session.get_outputs(), self.task)
        self.max_samples = min(config.max_samples, int(self.metadata.max_samples or config.max_samples))
        if config.samples > self.max_samples:
            raise UsageError(f"--samples {config.samples} is more than model '{name}' allows ({self.max_samples})")

    def _model_input(self, inputs):
        names = {i.name: i for i in [*inputs, *self.session.get_overridable_initializers()]}  # `samples` has a default
        model_inputs = [i for i in inputs if i.name != SAMPLES_NAME]
        if len(model_inputs) > 1 and SAMPLES_NAME in names and all(i.type == "tensor(float)" for i in model_inputs):
            self.several_inputs = model_inputs  # one per model input, by name (deploykit.core.multi_io)
            return model_inputs[0]
        if set(names) != {INPUT_NAME, SAMPLES_NAME} or names[INPUT_NAME].type != "tensor(float)":
            raise ModelLoadError(
                f"{self.path}: an MC Dropout model needs the inputs '{INPUT_NAME}' (float32) and "
                f"'{SAMPLES_NAME}', got {[(i.name, i.type) for i in inputs]}"
            )
        return names[INPUT_NAME]

    def _samples(self, parameters: dict) -> tuple[int, None]:
        return limits.check_samples(parameters, self.config.samples, self.max_samples), None

    def _response_parameters(self, samples: int, note: None) -> dict:
        return {limits.SAMPLES_PARAMETER: samples}

    def metadata_parameters(self) -> dict:
        return {
            **super().metadata_parameters(),
            "default_samples": self.config.samples,
            "max_samples": self.max_samples,
        }

    def _kind_summary(self) -> str:
        return f"MC Dropout, samples {self.config.samples} (max {self.max_samples})"

    def _run(self, x: np.ndarray, samples: int) -> dict[str, np.ndarray]:
        """One onnxruntime call per chunk of rows (one call for the usual request: seeded models stay reproducible)."""
        feed = {SAMPLES_NAME: np.array(samples, dtype=np.int64)}
        step = max(1, MC_ROWS_PER_CALL // samples)
        parts = [
            self.session.run(
                self.graph_outputs, {**feed, **named_inputs.feed(named_inputs.part(x, i, i + step), INPUT_NAME)}
            )
            for i in range(0, named_inputs.rows(x), step)
        ]
        return {
            name: np.concatenate([p[k] for p in parts], axis=1 if name in SAMPLE_FIRST_OUTPUTS else 0)
            for k, name in enumerate(self.graph_outputs)
        }
