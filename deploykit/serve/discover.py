"""Which models ``deploykit serve`` serves: ONNX files found from one path, never from a request."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from deploykit.errors import UsageError

MODEL_FILE = "model.onnx"  # Triton repository layout: <name>/<version>/model.onnx
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def discover_models(
    source: str | os.PathLike,
    name: str | None = None,
    warn: Callable[[str], None] | None = None,
    prefer: str | None = None,
) -> dict[str, Path]:
    """Model name -> ONNX file for a file, a folder of ``*.onnx`` files, or a Triton-style repository.

    A file is served under its stem (``<name>/<version>/model.onnx`` under
    ``<name>``); in a folder every ``*.onnx`` file and every
    ``<name>/<version>/model.onnx`` (highest version) is served. ``name``
    renames the model when ``source`` holds exactly one. In a folder, a file
    whose name cannot be a model name (``model (1).onnx``, a macOS
    ``._model.onnx``, ``modèle.onnx``) is skipped with one line to ``warn``
    (default: stderr), as a model that cannot be loaded is; only when nothing
    is left is it an error. ``prefer`` (``latency`` or ``size``): a folder ``deploykit optimize`` wrote also
    serves the file its report.json recommends by it as ``recommended`` (:mod:`deploykit.serve.preferred`;
    not with ``name``).
    """
    models = _discover(Path(source), warn or _stderr)
    if prefer is not None and name is None and Path(source).is_dir():  # --name serves one model: no alias
        models = _with_recommended(models, Path(source), prefer, warn or _stderr)
    if name is None:
        return models
    if len(models) != 1:
        raise UsageError(f"--name names one model, but {source} holds {len(models)}: {', '.join(sorted(models))}")
    return _named({name: next(iter(models.values()))}, Path(source), "--name")


def _with_recommended(models: dict[str, Path], folder: Path, prefer: str, warn) -> dict[str, Path]:
    from deploykit.core.contract import RECOMMENDED_MODEL
    from deploykit.serve.preferred import preferred_model

    path = preferred_model(folder, prefer, warn)
    if path is None:
        return models
    if RECOMMENDED_MODEL in models:
        warn(f"warning: {folder} already holds a model named {RECOMMENDED_MODEL!r}: {path.name} is served as itself")
        return models
    return {RECOMMENDED_MODEL: path, **models}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _discover(path: Path, warn: Callable[[str], None]) -> dict[str, Path]:
    if path.is_file():
        if path.suffix != ".onnx":
            raise UsageError(f"{path} is not an .onnx file")
        return _named({_triton_name(path) or path.stem: path}, path)
    if not path.is_dir():
        raise UsageError(f"{path}: no such file or folder")
    found: dict[str, list[Path]] = {}
    own = _latest_version(path)
    if own:
        found[path.name] = [own]
    for file in sorted(path.glob("*.onnx")):
        found.setdefault(file.stem, []).append(file)
    odd = []  # version folders named with non-ASCII digits ('²'): never a version
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        latest = _latest_version(folder)
        if latest:
            found.setdefault(folder.name, []).append(latest)
        odd += [v for v in folder.iterdir() if v.is_dir() and v.name.isdigit() and not v.name.isascii()]
    clashes = {name: files for name, files in found.items() if len(files) > 1}
    if clashes:
        name, files = next(iter(clashes.items()))
        raise UsageError(f"two models named {name!r} in {path}: {', '.join(str(f) for f in files)}")
    if not found:
        raise UsageError(f"no models in {path}: expected *.onnx files or <name>/<version>/{MODEL_FILE} folders")
    named = {}
    skipped = [
        f"warning: skipping {limits_shown(str(v))}: version folders are named with ASCII digits only" for v in odd
    ]
    for name, files in found.items():
        problem = _name_problem(name)
        if problem:
            skipped.append(f"warning: skipping {limits_shown(str(files[0]))}: {problem}")
        else:
            named[name] = files[0]
    if not named:
        raise UsageError(f"no models to serve in {path}: {skipped[0].removeprefix('warning: skipping ')}")
    for line in skipped:
        warn(line)
    return named


def _triton_name(file: Path) -> str | None:
    if file.name == MODEL_FILE and file.parent.name.isascii() and file.parent.name.isdigit():
        return file.parent.parent.name
    return None


def _latest_version(folder: Path) -> Path | None:
    """The highest ``<version>/model.onnx``; a version is ASCII digits (``'²'.isdigit()`` is True, ``int`` fails)."""
    versions = [
        v
        for v in folder.iterdir()
        if v.name.isascii() and v.name.isdigit() and v.is_dir() and (v / MODEL_FILE).is_file()
    ]
    return max(versions, key=lambda v: int(v.name)) / MODEL_FILE if versions else None


def _named(models: dict[str, Path], source: Path, origin: str | None = None) -> dict[str, Path]:
    for name in models:
        problem = _name_problem(name, origin or source)
        if problem:
            raise UsageError(problem)
    return models


def _name_problem(name: str, origin=None) -> str:
    """Why ``name`` cannot be a model name (it is a URL path segment and a log word), or ''."""
    if _NAME.match(name) and len(name) <= 128:
        return ""
    where = f" (from {origin})" if origin else ""
    return (
        f"model name {limits_shown(name, 128)}{where} must be at most 128 ASCII letters, digits, "
        "'_', '-' or '.', starting with a letter or digit"
    )


def limits_shown(value: str, limit: int = 200) -> str:
    """A file or model name as a warning shows it: quoted, control characters escaped, bounded."""
    text = value[:limit].encode("unicode_escape").decode("ascii") if not value.isprintable() else value[:limit]
    return repr(text) + ("..." if len(value) > limit else "")
