"""kserve models that run deploykit ONNX files in onnxruntime: deterministic and MC Dropout.

:func:`open_model` reads the kind from the file's deploykit metadata
(``deploykit.export.metadata``) and returns the matching model. One
onnxruntime session per model; ``InferenceSession.run`` is thread-safe.
Small requests run on the event loop (a thread hop costs more than the
inference); large ones in a worker thread so the server stays responsive.
Each request's work (rows x samples) and response size (numbers sent) are
bounded before anything runs.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from abc import abstractmethod
from pathlib import Path

import numpy as np

from deploykit.errors import DeployKitError, ModelLoadError, UsageError
from deploykit.export.convert import INPUT_NAME
from deploykit.export.metadata import KIND_MC_DROPOUT, read_metadata
from deploykit.serve import limits
from deploykit.serve._kserve import InferOutput, InferRequest, InferResponse, InvalidInput, Model, from_np_dtype
from deploykit.serve.config import ServeConfig

# The MC Dropout ONNX contract of deploykit.uncertainty.export_mc_onnx, repeated so that the server imports
# nothing of the exporter (its package pulls the layer chain); tests/serve checks that both agree.
SAMPLES_NAME = "samples"
OUTPUT_NAMES = ("mean", "std", "predictive_entropy", "mutual_information", "predicted_class")
SAMPLES_OUTPUT = "sample_probabilities"

#: What each output means: served in the model metadata (``parameters.description`` of each output).
GLOSSARY = {
    "probabilities": "class probabilities (softmax), one per class label",
    "mean": "mean over the T dropout samples of the class probabilities: the prediction",
    "std": "standard deviation over the T samples of each class probability (population std, in probability units)",
    "predictive_entropy": "entropy of `mean` in nats (natural log), from 0 to ln(classes): total uncertainty",
    "mutual_information": "predictive_entropy minus the average entropy of the T samples, in nats: the model's "
                          "own (epistemic) uncertainty, high when the samples disagree",
    "predicted_class": "index of the largest `mean` (argmax of mean), an index into class_labels",
    SAMPLES_OUTPUT: "class probabilities of each dropout sample, shape [T, N, classes] (samples first)",
}
#: Triton's classification extension: the requested output's parameter naming how many top classes to return.
CLASSIFICATION = "classification"

#: Requests up to this many network rows (instances x samples) run on the event loop.
INLINE_ROWS = 2048
#: Responses with more numbers than this are built in a worker thread.
INLINE_VALUES = 65536
#: An MC request is split into onnxruntime calls of at most this many network rows (bounds the memory).
MC_ROWS_PER_CALL = 65536

_DATATYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(double)": "FP64"}


def open_model(name: str, path: str | os.PathLike, config: ServeConfig) -> OnnxModel:
    """Load ``path`` in onnxruntime and wrap it as the model its metadata says (deterministic or MC)."""
    session = _session(Path(path), config.threads)
    kind = read_metadata(session).kind
    cls = MCDropoutModel if kind == KIND_MC_DROPOUT else DeterministicModel
    return cls(name, Path(path), session, config)


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the MC model's optional `samples` initializer warns on every load
    if threads is not None:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not burn shared CPUs
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"{path}: onnxruntime cannot load it ({type(exc).__name__}: {exc})") from None


def _v1_predictions(values: dict[str, np.ndarray], rows: int) -> list:
    """v1 predictions: one list per row (one output), or one object of outputs per row."""
    if len(values) == 1:
        return next(iter(values.values())).tolist()
    per_output = {name: np.moveaxis(v, 1, 0) if name == SAMPLES_OUTPUT else v for name, v in values.items()}
    return [{name: v[i].tolist() for name, v in per_output.items()} for i in range(rows)]


def _row_size(shape) -> int:
    """Numbers per row of an output (its fixed dims after the first; 1 for a dynamic one)."""
    return int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in shape[1:]], dtype=np.int64))


def _tensor_meta(arg) -> dict:
    dims = [d if isinstance(d, int) else -1 for d in arg.shape]
    return {"name": arg.name, "datatype": _DATATYPES.get(arg.type, arg.type), "shape": dims}


class OnnxModel(Model):
    """A deploykit ONNX model served over KServe v1 and v2 (Open Inference Protocol)."""

    def __init__(self, name: str, path: Path, session, config: ServeConfig):
        super().__init__(name)
        self.path = path
        self.session = session
        self.config = config
        self.metadata = read_metadata(session)
        self.input = self._model_input(session.get_inputs())
        if not all(isinstance(d, int) and d > 0 for d in self.input.shape[1:]):
            raise ModelLoadError(f"{path}: input '{self.input.name}' needs fixed sizes after the batch axis, "
                                 f"got {self.input.shape}")
        self.input_shape = tuple(self.input.shape[1:])
        self.output_names = [o.name for o in session.get_outputs()]
        self.output_sizes = {o.name: _row_size(o.shape) for o in session.get_outputs()}
        self.class_labels = [str(c) for c in self.metadata.class_names]
        self.class_outputs = {o.name for o in session.get_outputs()  # [N, classes] float: classification applies
                              if len(o.shape) == 2 and o.type == "tensor(float)" and o.name != SAMPLES_OUTPUT}
        self.ready = True

    def _model_input(self, inputs):
        if len(inputs) != 1 or inputs[0].type != "tensor(float)":
            raise ModelLoadError(f"{self.path}: expected one float32 input, got {[(i.name, i.type) for i in inputs]}")
        return inputs[0]

    def get_input_types(self) -> list[dict]:
        return [_tensor_meta(self.input)]

    def get_output_types(self) -> list[dict]:
        return [{**_tensor_meta(o), "parameters": {"description": GLOSSARY[o.name]}} if o.name in GLOSSARY
                else _tensor_meta(o) for o in self.session.get_outputs()]

    def metadata_parameters(self) -> dict:
        """The model-level ``parameters`` of ``/v2/models/NAME``: its kind, class labels, samples."""
        return {"kind": self.metadata.kind, "class_labels": self.class_labels}

    async def predict(self, payload, headers=None, response_headers=None):
        """v2: an ``InferRequest`` -> ``InferResponse``; v1: ``{"instances": [...]}`` -> ``{"predictions": [...]}``."""
        try:
            if isinstance(payload, InferRequest):
                return await self._predict_v2(payload)
            return await self._predict_v1(payload)
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
        x = limits.v2_input(request.inputs, self.input.name, self.input_shape, self.config.max_rows)
        requested = [o.name for o in request.request_outputs or []] or self.output_names
        self._check_work(len(x), samples, requested)
        values = await self._infer(x, samples)
        top = {o.name: o.parameters[CLASSIFICATION] for o in request.request_outputs or []
               if (o.parameters or {}).get(CLASSIFICATION) is not None}
        outputs = [self._output(name, v, top.get(name)) for name, v in values.items()]
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()), model_name=self.name, infer_outputs=outputs,
            parameters=self._response_parameters(samples, note), use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )

    def _output(self, name: str, value: np.ndarray, top: int | None) -> InferOutput:
        if top is None:
            return InferOutput(name, list(value.shape), from_np_dtype(value.dtype), data=value)
        labels = limits.classify(value, top, self.class_labels)
        return InferOutput(name, list(labels.shape), "BYTES", data=labels)

    async def _predict_v1(self, payload) -> dict:
        x = limits.v1_instances(payload, self.input_shape, self.config.max_rows)
        samples, note = self._samples(limits.check_parameters(payload.get("parameters")))
        self._check_work(len(x), samples, self.output_names)
        values = await self._infer(x, samples)
        if sum(v.size for v in values.values()) > INLINE_VALUES:  # building the lists takes a while: not on the loop
            predictions = await asyncio.to_thread(_v1_predictions, values, len(x))
        else:
            predictions = _v1_predictions(values, len(x))
        return {"predictions": predictions, **({"parameters": note} if note else {})}

    def _check_work(self, rows: int, samples: int | None, outputs: list[str]) -> None:
        """Refuse a request whose network rows (rows x samples) or response numbers exceed the limits."""
        network_rows = rows * (samples or 1)
        if network_rows > self.config.max_network_rows:
            raise limits.RequestError(
                f"{rows} rows x {samples} samples = {network_rows} network rows, more than the limit of "
                f"{self.config.max_network_rows} per request; send fewer rows or samples")
        per_row = sum(self.output_sizes[n] * (samples if n == SAMPLES_OUTPUT else 1) for n in outputs)
        if rows * per_row > self.config.max_response_values:
            raise limits.RequestError(
                f"the response would hold {rows * per_row} numbers ({rows} rows x {per_row}), more than the limit "
                f"of {self.config.max_response_values}; send fewer rows or samples, or request fewer outputs")

    def _check_requested_outputs(self, requested) -> None:
        for output in requested or []:
            if output.name not in self.output_names:
                raise limits.RequestError(f"unknown output {limits.shown(output.name)}; model '{self.name}' has "
                                          f"outputs {self.output_names}")
            if output.parameters is not None and not isinstance(output.parameters, dict):
                raise limits.RequestError(f"'parameters' of output {limits.shown(output.name)} must be an object")
            top = (output.parameters or {}).get(CLASSIFICATION)
            if top is not None:
                limits.check_classification(output.name, top, self.output_sizes[output.name],
                                            output.name in self.class_outputs)

    async def _infer(self, x: np.ndarray, samples: int | None) -> dict[str, np.ndarray]:
        if len(x) * (samples or 1) <= INLINE_ROWS:
            return self._run(x, samples)
        return await asyncio.to_thread(self._run, x, samples)

    @abstractmethod
    def _samples(self, parameters: dict) -> tuple[int | None, dict | None]:
        """The number of MC samples a request asks for (None: not an MC model), and a note for the response."""

    @abstractmethod
    def _response_parameters(self, samples: int | None, note: dict | None) -> dict | None:
        """The ``parameters`` of a v2 response."""

    @abstractmethod
    def _run(self, x: np.ndarray, samples: int | None) -> dict[str, np.ndarray]:
        """Every output of the model for a checked batch, by name."""


class DeterministicModel(OnnxModel):
    """An exported classifier: input -> ``probabilities`` (any single-float-input ONNX model works)."""

    def _samples(self, parameters: dict) -> tuple[None, dict | None]:
        """``samples`` is ignored (with a note), as Triton ignores parameters a model does not use."""
        return None, limits.ignored_samples(parameters, self.name)

    def _response_parameters(self, samples: None, note: dict | None) -> dict | None:
        return note

    def _run(self, x: np.ndarray, samples: None) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, {self.input.name: x}), strict=True))


class MCDropoutModel(OnnxModel):
    """An MC Dropout model from ``export_mc_onnx``: T dropout samples per call, reduced in the graph.

    ``samples`` comes from the request's parameters (default: the server's
    ``--samples``), limited by the server and by the model's own ``max_samples``.
    """

    def __init__(self, name: str, path: Path, session, config: ServeConfig):
        super().__init__(name, path, session, config)
        missing = sorted(set(OUTPUT_NAMES) - set(self.output_names))
        if missing:
            raise ModelLoadError(f"{path}: an MC Dropout model needs the outputs {list(OUTPUT_NAMES)}; missing {missing}")
        self.max_samples = min(config.max_samples, int(self.metadata.max_samples or config.max_samples))
        if config.samples > self.max_samples:
            raise UsageError(f"--samples {config.samples} is more than model '{name}' allows ({self.max_samples})")

    def _model_input(self, inputs):
        names = {i.name: i for i in [*inputs, *self.session.get_overridable_initializers()]}  # `samples` has a default
        if set(names) != {INPUT_NAME, SAMPLES_NAME} or names[INPUT_NAME].type != "tensor(float)":
            raise ModelLoadError(f"{self.path}: an MC Dropout model needs the inputs '{INPUT_NAME}' (float32) and "
                                 f"'{SAMPLES_NAME}', got {[(i.name, i.type) for i in inputs]}")
        return names[INPUT_NAME]

    def _samples(self, parameters: dict) -> tuple[int, None]:
        return limits.check_samples(parameters, self.config.samples, self.max_samples), None

    def _response_parameters(self, samples: int, note: None) -> dict:
        return {limits.SAMPLES_PARAMETER: samples}

    def metadata_parameters(self) -> dict:
        return {**super().metadata_parameters(), "default_samples": self.config.samples,
                "max_samples": self.max_samples}

    def _run(self, x: np.ndarray, samples: int) -> dict[str, np.ndarray]:
        """One onnxruntime call per chunk of rows (one call for the usual request: seeded models stay reproducible)."""
        feed = {SAMPLES_NAME: np.array(samples, dtype=np.int64)}
        step = max(1, MC_ROWS_PER_CALL // samples)
        parts = [self.session.run(self.output_names, {**feed, INPUT_NAME: x[i:i + step]}) for i in range(0, len(x), step)]
        return {name: np.concatenate([p[k] for p in parts], axis=1 if name == SAMPLES_OUTPUT else 0)
                for k, name in enumerate(self.output_names)}
