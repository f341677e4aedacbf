"""Run an exported artifact in the runtime that serves it: onnxruntime for .onnx, LiteRT for .tflite.

``open_runner(path).predict(x)`` takes raw float inputs and returns the model's
main output as float32 (:func:`deploykit.core.contract.main_output`: class probabilities, or a
regressor's prediction; a logits classifier's ``probabilities``) for either format (an int8-I/O TFLite model gets its
inputs quantized and its outputs dequantized with the scale and zero point
stored in the file). Validation, the benchmarks, the MC and serving parts
share these wrappers, :func:`median_seconds` and :func:`interleaved_fastest`.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deploykit.core.multi_io import artifact_layout
from deploykit.errors import ModelLoadError, UsageError, one_line
from deploykit.export.config import ExportFormat
from deploykit.log import quiet_native


class OnnxRunner:
    """One onnxruntime CPU session of a single-input model, run for its main output."""

    format = ExportFormat.ONNX
    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from deploykit.onnx.sessions import onnx_session

        self.path = Path(path)
        self.session = onnx_session(self.path, threads=threads or None)
        from deploykit.core.contract import main_output

        outputs = {o.name: o for o in self.session.get_outputs()}
        inp, out = self.session.get_inputs()[0], outputs[main_output(outputs)]
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = tuple(inp.shape[1:])
        self.output_shape = tuple(out.shape[1:])
        self.layout = artifact_layout(
            {
                i.name: tuple(i.shape[1:]) for i in self.session.get_inputs() if i.type == "tensor(float)"
            },  # an MC model's `samples` is no model input
            {o.name: tuple(o.shape[1:]) for o in outputs.values()},
        )
        self.input_shape, self.output_shape = packed_shapes(self.layout, self.input_shape, self.output_shape)

    def declared_outputs(self) -> dict[str, tuple[str, list]]:
        """{name: (dtype, shape)} of every graph output, as deploykit.core.contract checks them."""
        from deploykit.core.contract import declared_outputs

        return declared_outputs(self.session.get_outputs())

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.layout is None:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        names = self.layout.output_names() or [self.output_name]  # several inputs, one output: the main one
        values = self.session.run(names, self.layout.split_inputs(x))
        return values[0] if len(values) == 1 else self.layout.join_outputs(dict(zip(names, values)))


class TfliteRunner:
    """One LiteRT interpreter; the batch axis is resized to each call's batch."""

    format = ExportFormat.TFLITE
    runtime = "LiteRT"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        except Exception as exc:
            raise ModelLoadError(f"{self.path}: LiteRT cannot load it ({type(exc).__name__}: {exc})") from None
        self._in = self.interpreter.get_input_details()[0]
        self.output_name, self._out = _main_output(self.interpreter)
        self.input_name = self._in["name"]
        self.input_shape = tuple(int(d) for d in self._in["shape_signature"][1:])
        self.output_shape = tuple(int(d) for d in self._out["shape_signature"][1:])
        self.input_dtype = np.dtype(self._in["dtype"])
        self.input_quantization = _params(self._in)
        self.output_quantization = _params(self._out)
        self._batch = None
        self._named = _signature_tensors(self.interpreter)  # several inputs / outputs: name -> details
        self.layout = (
            None
            if self._named is None
            else artifact_layout(
                *({n: tuple(int(d) for d in t["shape_signature"][1:]) for n, t in part.items()} for part in self._named)
            )
        )
        self.input_shape, self.output_shape = packed_shapes(self.layout, self.input_shape, self.output_shape)

    def declared_outputs(self) -> dict[str, tuple[str, list]]:
        """{name: (dtype, shape)} of the signature's outputs (:func:`tflite_outputs`)."""
        return tflite_outputs(self.interpreter)

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.layout is not None:
            return self._predict_named(x)
        if len(x) != self._batch:
            self.interpreter.resize_tensor_input(self._in["index"], [len(x), *self.input_shape])
            with quiet_native():  # the first allocation prints "INFO: Created TensorFlow Lite XNNPACK delegate"
                self.interpreter.allocate_tensors()
            self._batch = len(x)
        self.interpreter.set_tensor(self._in["index"], _quantize(x, self.input_quantization, self.input_dtype))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._out["index"])
        if self.output_quantization is not None:
            scale, zero = self.output_quantization
            return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
        return np.array(y, dtype=np.float32)

    def _predict_named(self, x: np.ndarray) -> np.ndarray:
        """An artifact with several named inputs or outputs: the packed input split by name, the outputs joined."""
        inputs, outputs = self._named
        if len(x) != self._batch:
            for t in inputs.values():
                self.interpreter.resize_tensor_input(t["index"], [len(x), *t["shape_signature"][1:]])
            with quiet_native():
                self.interpreter.allocate_tensors()
            self._batch = len(x)
        for name, value in self.layout.split_inputs(x).items():
            t = inputs[name]
            self.interpreter.set_tensor(t["index"], _quantize(value, _params(t), np.dtype(t["dtype"])))
        self.interpreter.invoke()
        names = self.layout.output_names() or [self.output_name]
        values = {n: _dequantize(self.interpreter.get_tensor(outputs[n]["index"]), _params(outputs[n])) for n in names}
        return values[names[0]] if len(names) == 1 else self.layout.join_outputs(values)


def tflite_outputs(interpreter) -> dict[str, tuple[str, list]]:
    """{name: (dtype, shape)} of a LiteRT interpreter's signature outputs, as deploykit.core.contract checks them (a
    quantized output as the float32 the runners read it as; no signature: the tensor names)."""
    details = {d["index"]: d for d in interpreter.get_output_details()}
    try:
        signature = next(iter(interpreter._get_full_signature_list().values()))["outputs"]
    except (AttributeError, StopIteration, KeyError, TypeError):
        signature = {d["name"]: i for i, d in details.items()}
    return {
        name: (
            "float32" if _params(details[i]) else np.dtype(details[i]["dtype"]).name,
            [int(d) if d > 0 else None for d in details[i]["shape_signature"]],
        )
        for name, i in signature.items()
        if i in details
    }


def packed_shapes(layout, input_shape: tuple, output_shape: tuple) -> tuple[tuple, tuple]:
    """(input shape, output shape) a runner takes and gives: packed widths for an artifact with several tensors (or
    an image out, [N, 8, 8, 1] given as its [N, 64] columns)."""
    if layout is None:
        return input_shape, output_shape
    return layout.packed_input_shape, (layout.output_size,) if layout.outputs else output_shape


def _signature_tensors(interpreter) -> tuple[dict, dict] | None:
    """({input name: details}, {output name: details}) of a signature with several inputs or outputs, else None."""
    try:
        signature = next(iter(interpreter._get_full_signature_list().values()))
    except (AttributeError, StopIteration, KeyError, TypeError):
        return None
    by_index = {d["index"]: d for d in [*interpreter.get_input_details(), *interpreter.get_output_details()]}
    shaped = any(len(by_index[i]["shape_signature"]) > 2 for i in signature["outputs"].values() if i in by_index)
    if len(signature["inputs"]) <= 1 and len(signature["outputs"]) <= 1 and not shaped:
        return None
    return (
        {n: by_index[i] for n, i in signature["inputs"].items()},
        {n: by_index[i] for n, i in signature["outputs"].items()},
    )


def _dequantize(y: np.ndarray, params: tuple[float, int] | None) -> np.ndarray:
    if params is None:
        return np.array(y, dtype=np.float32)
    scale, zero = params
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


RUNNERS = {".onnx": OnnxRunner, ".tflite": TfliteRunner}


def runner_class(path: str | os.PathLike) -> type[OnnxRunner] | type[TfliteRunner]:
    """The runner class for an artifact, chosen by its suffix (.onnx or .tflite)."""
    path = Path(path)
    if path.suffix.lower() not in RUNNERS:
        raise UsageError(f"artifact {path}: unknown format {path.suffix or '(no suffix)'}; expected .onnx or .tflite")
    return RUNNERS[path.suffix.lower()]


def open_runner(path: str | os.PathLike, threads: int | None = None) -> OnnxRunner | TfliteRunner:
    """The runner for an artifact, chosen by its suffix (.onnx or .tflite)."""
    path = Path(path)
    cls = runner_class(path)
    if not path.is_file():
        raise ModelLoadError(f"artifact {path}: no such file")
    return cls(path, threads)


def artifact_quantization(path: str | os.PathLike) -> str:
    """What an artifact file holds, as a :class:`~deploykit.export.config.Quantization` value ("float32",
    "int8-full", ...)."""
    path = Path(path)
    return _onnx_quantization(path) if runner_class(path) is OnnxRunner else _tflite_quantization(path)


def _onnx_quantization(path: Path) -> str:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    ops = {node.op_type for node in proto.graph.node}
    if ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}:
        return "int8-dynamic"
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearMatMul"}:
        return "int8-static"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        return "float16"
    return "float32"


def _tflite_quantization(path: Path) -> str:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    constant_int8 = activation_int8 = float16 = False
    for tensor in interpreter.get_tensor_details():
        dtype = np.dtype(tensor["dtype"])
        if dtype == np.float16:
            float16 = True
        elif dtype == np.int8:
            try:  # constants hold data before allocate_tensors(); activations do not
                interpreter.get_tensor(tensor["index"])
                constant_int8 = True
            except ValueError:
                activation_int8 = True
    if activation_int8:
        return "int8-full"
    if constant_int8:
        return "int8-weights"
    return "float16" if float16 else "float32"


def predict_batches(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """``predict`` over ``x`` in batches, concatenated."""
    return np.concatenate([np.asarray(predict(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    return interleaved_medians({"fn": fn}, repeats, warmup)["fn"]


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so load drifts hit all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def time_files(
    files: dict, x: np.ndarray, batch_size: int, calls: tuple[int, int], seconds: float, cap: int
) -> tuple[dict[str, tuple[float, float]], dict[str, str]]:
    """(batch-1 s, batch-``batch_size`` s) per file, each the fastest of its runtime's calls timed round-robin with
    the others (:func:`interleaved_fastest`, ``calls`` at least at each size), and the files that could not be
    timed with why. A runtime that raises on a file (LiteRT once failed a validated float16 file's ``GATHER`` at
    batch 256, only after another interpreter had run in the process) leaves that file untimed; the others are
    timed without it. Run in a runtime worker (:meth:`deploykit.export.isolated.RuntimeWorker.time_files`)."""
    runners, untimed = {}, {}
    for name, path in files.items():
        try:
            runners[name] = open_runner(path)
        except Exception as exc:  # noqa: BLE001  (a runtime's own error loading a validated file: not timed)
            untimed[name] = one_line(exc)
    one, batch = x[:1], np.resize(x, (batch_size, *x.shape[1:]))
    while True:
        try:
            b1 = interleaved_fastest(_timed_calls(runners, one), calls[0], seconds, cap)
            bn = interleaved_fastest(_timed_calls(runners, batch), calls[1], seconds, cap)
        except _Untimed as exc:
            untimed[exc.name] = exc.why
            del runners[exc.name]
            continue
        return {n: (b1[n], bn[n]) for n in runners}, untimed


class _Untimed(Exception):
    def __init__(self, name: str, why: str):
        super().__init__(name)
        self.name, self.why = name, why


def _timed_calls(runners: dict, x: np.ndarray) -> dict[str, Callable[[], object]]:
    def call(name, runner):
        def run():
            try:
                return runner.predict(x)
            except Exception as exc:  # noqa: BLE001  (the runtime's own error, any type)
                raise _Untimed(name, one_line(exc)) from exc

        return run

    return {n: call(n, r) for n, r in runners.items()}


def interleaved_fastest(
    fns: dict[str, Callable[[], object]], repeats: int, seconds: float = 0.0, cap: int = 400, warmup: int = 2
) -> dict[str, float]:
    """The fastest call of each function in seconds, timed round-robin: ``repeats`` calls each at least, more (up to
    ``cap``) until the slowest has had about ``seconds`` of calls; every function is called as often.

    For comparing files (speed-ups, "slower than float32"), not for describing a typical call: other processes on
    the machine only ever add time to a call, so the fastest of interleaved calls is the steadiest estimate of what
    each file costs, where the median of a few calls on a loaded machine moved 4x to 30x for the same graph."""
    warm: dict[str, float] = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            start = time.perf_counter()
            fn()
            warm[name] = time.perf_counter() - start
    slowest = max(warm.values(), default=0.0)
    rounds = int(min(cap, max(repeats, seconds / max(slowest, 1e-9)))) if seconds > 0 else repeats
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _main_output(interpreter) -> tuple[str, dict]:
    """(name, details) of the output to run for: the signature's main output (deploykit.core.contract.main_output), else
    the first.

    The signature maps output names to tensors; ``get_output_details`` alone does not say which is which
    (a logits classifier has two outputs, ``logits`` and ``probabilities``).
    """
    from deploykit.core.contract import main_output

    details = interpreter.get_output_details()
    try:
        signature = next(iter(interpreter._get_full_signature_list().values()))["outputs"]
    except (AttributeError, StopIteration, KeyError, TypeError):  # no signature: the first output, by its tensor name
        return details[0]["name"], details[0]
    name = main_output(signature)
    return name, next(d for d in details if d["index"] == signature[name])


def _params(detail: dict) -> tuple[float, int] | None:
    scale, zero = detail["quantization"]
    return (float(scale), int(zero)) if scale else None


def _quantize(x: np.ndarray, params: tuple[float, int] | None, dtype: np.dtype) -> np.ndarray:
    if params is None:
        return np.ascontiguousarray(x, dtype=dtype)
    scale, zero = params
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)
