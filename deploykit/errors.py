"""The errors deploykit raises: each names the problem in one line.

The CLI prints ``str(error)`` on one line (exit code 1, or 2 for usage errors);
the traceback only with ``--verbose``.
"""

from __future__ import annotations

from dataclasses import dataclass


class DeployKitError(Exception):
    """Base class of every error deploykit raises on purpose."""

    exit_code = 1


class UsageError(DeployKitError):
    """The call itself is wrong (a bad option value, a bad config key)."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration (dataclass, TOML file) holds a bad key or value."""


class DataError(DeployKitError):
    """Input data cannot be used: unknown format, NaN, mismatched lengths..."""


class ModelLoadError(DeployKitError):
    """A path is not a model deploykit can load."""


class UnsupportedLayerError(ModelLoadError):
    """The model holds a layer deploykit does not handle (Conv2D, LSTM, ...)."""

    def __init__(self, layer_name: str, layer_type: str, why: str = ""):
        self.layer_name = layer_name
        self.layer_type = layer_type
        from deploykit.layers import SUPPORT  # the table names what is supported

        detail = f": {why}" if why else ""
        known = ", ".join(name for name, entry in SUPPORT.items() if not entry.needs_unsafe)
        super().__init__(f"unsupported layer {layer_name!r} of type {layer_type}{detail}; deploykit handles dense networks ({known})")


class UnsafeModelError(ModelLoadError):
    """The model holds Lambda layers or custom code; loading it may run code."""


class StepError(DeployKitError):
    """A pipeline step failed; ``step`` names it (None when raised outside a pipeline)."""

    def __init__(self, message: str, step: str | None = None):
        self.step = step
        super().__init__(message)


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

