"""The errors deploykit raises: each names the problem in one line.

The CLI prints ``str(error)`` on one line (exit code 1, or 2 for usage errors);
the traceback only with ``--verbose``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass


class DeployKitError(Exception):
    """Base class of every error deploykit raises on purpose."""

    exit_code = 1


class UsageError(DeployKitError):
    """The call itself is wrong (a bad option value, a bad config key)."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration (dataclass, TOML file) holds a bad key or value."""


class OutputExistsError(UsageError):
    """An output folder is in the way: it existed at the start, or appeared before the final rename."""


class DataError(DeployKitError):
    """Input data cannot be used: unknown format, NaN, mismatched lengths, too large, or not fitting the model."""


class ModelLoadError(DeployKitError):
    """A path is not a model deploykit can load."""


class OutputContractError(ModelLoadError):
    """A model's output breaks deploykit.core.contract.OUTPUTS (missing, or of another dtype or shape), named before any
    value is read."""


class UnsizedInputError(ModelLoadError):
    """A model input has axes of no fixed size besides the batch (text and sequence models), and no data gave them.

    ``inputs`` maps each input's name to its declared per-sample shape (None for an unsized axis), so a caller
    holding data can size them (:mod:`deploykit.io.lengths`) and load again.
    """

    def __init__(self, path, inputs: dict[str, tuple]):
        self.inputs = dict(inputs)
        unsized = {n: s for n, s in self.inputs.items() if s is None or None in s}
        named = ", ".join(f"{n!r} {'(unknown shape)' if s is None else tuple(s)}" for n, s in unsized.items())
        super().__init__(
            f"model {path}: input {named} has no fixed length; give --data (data= in the API), whose arrays fix "
            "it, or save the model with a fixed input shape (keras.Input(shape=...) with every axis sized)"
        )


class UnsupportedLayerError(ModelLoadError):
    """The model holds a layer deploykit does not handle (Conv2D, LSTM, ...)."""

    def __init__(self, layer_name: str, layer_type: str, why: str = ""):
        self.layer_name = layer_name
        self.layer_type = layer_type
        detail = f": {why}" if why else ""
        super().__init__(f"unsupported layer {layer_name!r} of type {layer_type}{detail}")


class UnsafeModelError(ModelLoadError):
    """The model holds Lambda layers or custom code; loading it may run code."""


class StepError(DeployKitError):
    """A pipeline step failed; ``step`` names it (None when raised outside a pipeline)."""

    def __init__(self, message: str, step: str | None = None):
        self.step = step
        super().__init__(message)


class ConversionError(StepError):
    """A converter (tf2onnx, the TFLite converter) could not convert the model to one format.

    It concerns that format only: ``deploykit export`` and ``optimize`` reject that
    format's artifacts with this message and ship the others.
    """


def one_line(exc: BaseException) -> str:
    """An exception as one line of at most ~300 characters, its type first (for messages that wrap it)."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def converting(what: str) -> Iterator[None]:
    """Any exception a foreign converter or quantizer raises inside as one :class:`ConversionError` saying ``what``
    failed: they raise many types (an ``AssertionError`` from onnxruntime's symbolic shape inference on a
    ``ConvTranspose``'s output size), and each means that variant could not be made, not that the run must stop.
    deploykit's own errors pass through."""
    try:
        yield
    except DeployKitError:
        raise
    except Exception as exc:
        raise ConversionError(f"{what} failed: {one_line(exc)}") from exc


@dataclass
class Mismatch:
    """One check that missed: what was measured against what was required."""

    check: str
    measured: float
    required: str
    detail: str = ""

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.check} = {self.measured:.6g}, required {self.required}{extra}"


class ValidationError(DeployKitError):
    """An artifact failed its tolerance; carries every mismatch with its numbers."""

    def __init__(self, artifact: str, mismatches: list[Mismatch], report: object = None):
        self.artifact = artifact
        self.mismatches = list(mismatches)
        self.report = report
        joined = "; ".join(str(m) for m in self.mismatches)
        super().__init__(f"{artifact} failed validation: {joined}")


class RuntimeFailureError(ValidationError, ModelLoadError):
    """A runtime raised (a Python exception, not a signal) while loading or running an artifact: LiteRT's
    ``RuntimeError`` from a kernel that cannot prepare (``BROADCAST_TO`` of a GroupNormalization).

    Like a crash it fails that artifact only: a ValidationError, so ``optimize`` and ``export`` reject the file and
    ship the others. It is also a ModelLoadError: a file the user gave that the runtime cannot load is bad input.
    """

    def __init__(self, message: str):
        self.artifact, self.mismatches, self.report = "", [], None
        DeployKitError.__init__(self, message)


class RuntimeCrashError(ValidationError):
    """A runtime died natively (a signal, not a Python exception) on an artifact.

    Validation runs each artifact in a child process, so the crash fails that
    artifact only; the caller can reject it and go on with the others.
    """

    def __init__(
        self, artifact: str, runtime: str, stage: str, signal: int | None, exitcode: int | None = None, detail: str = ""
    ):
        import signal as signals

        self.artifact, self.mismatches, self.report = artifact, [], None
        self.runtime, self.stage, self.signal, self.exitcode = runtime, stage, signal, exitcode
        how = f"signal {signal}" if signal is not None else f"exit code {exitcode}"
        if signal is not None and signal in signals.Signals._value2member_map_:
            how += f", {signals.Signals(signal).name}"
        extra = f": {detail}" if detail else ""
        DeployKitError.__init__(self, f"{artifact}: {runtime} crashed while {stage} ({how}){extra}")
