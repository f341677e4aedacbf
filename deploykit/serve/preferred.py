"""The ``recommended`` model of an optimize output folder: what its report.json says to serve (``--prefer``).

``deploykit optimize`` times every shipped artifact against the original and writes, in report.json's
``objective`` entry, the fastest and the smallest ONNX file (:mod:`deploykit.pipeline.objective`). Serving that
folder adds the one ``--prefer`` names (``latency``, the default, or ``size``) under the name ``recommended``, so a
client calls one name whatever file won. Only json is read here: serving imports no TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from deploykit.core.contract import RECOMMENDED_MODEL, REPORT_FILE

#: What ``serve --prefer`` chooses by (the report's objectives a single served model can be chosen by).
PREFERENCES = ("latency", "size")
DEFAULT_PREFERENCE = "latency"
_REPORT_LIMIT = 64 * 1024 * 1024  # report.json of a large run is a few MiB; more is not a report


def preferred_model(folder: Path, prefer: str, warn: Callable[[str], None]) -> Path | None:
    """The ONNX file ``folder``'s report.json recommends by ``prefer``; None (with one line to ``warn`` when the
    report is there but says nothing usable) when there is none."""
    report = folder / REPORT_FILE
    if not report.is_file():
        return None
    try:
        if report.stat().st_size > _REPORT_LIMIT:
            raise ValueError(f"larger than {_REPORT_LIMIT} bytes")
        entry = json.loads(report.read_text(encoding="utf-8")).get("objective") or {}
        file = ((entry.get("by_format") or {}).get("onnx") or {}).get(prefer)
    except (OSError, ValueError, AttributeError) as exc:
        warn(f"warning: {report}: cannot read the recommended model ({exc.__class__.__name__}: {exc})")
        return None
    if not file:
        warn(f"warning: {report} recommends no ONNX model by {prefer}: no '{RECOMMENDED_MODEL}' model is served")
        return None
    path = folder / file
    if Path(file).name != file or path.suffix != ".onnx" or not path.is_file():
        warn(f"warning: {report} recommends {file!r}, which is not an ONNX file of {folder}: not served")
        return None
    return path
