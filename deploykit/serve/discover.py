"""Which models ``deploykit serve`` serves: ONNX files found from one path, never from a request."""

from __future__ import annotations

import os
import re
from pathlib import Path

from deploykit.errors import UsageError

MODEL_FILE = "model.onnx"  # Triton repository layout: <name>/<version>/model.onnx
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def discover_models(source: str | os.PathLike, name: str | None = None) -> dict[str, Path]:
    """Model name -> ONNX file for a file, a folder of ``*.onnx`` files, or a Triton-style repository.

    A file is served under its stem (``<name>/<version>/model.onnx`` under
    ``<name>``); in a folder every ``*.onnx`` file and every
    ``<name>/<version>/model.onnx`` (highest version) is served. ``name``
    renames the model when ``source`` holds exactly one.
    """
    models = _discover(Path(source))
    if name is None:
        return models
    if len(models) != 1:
        raise UsageError(f"--name names one model, but {source} holds {len(models)}: {', '.join(sorted(models))}")
    return _named({name: next(iter(models.values()))}, Path(source), "--name")


def _discover(path: Path) -> dict[str, Path]:
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
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        latest = _latest_version(folder)
        if latest:
            found.setdefault(folder.name, []).append(latest)
    clashes = {name: files for name, files in found.items() if len(files) > 1}
    if clashes:
        name, files = next(iter(clashes.items()))
        raise UsageError(f"two models named {name!r} in {path}: {', '.join(str(f) for f in files)}")
    if not found:
        raise UsageError(f"no models in {path}: expected *.onnx files or <name>/<version>/{MODEL_FILE} folders")
    return _named({name: files[0] for name, files in found.items()}, path)


def _triton_name(file: Path) -> str | None:
    if file.name == MODEL_FILE and file.parent.name.isdigit():
        return file.parent.parent.name
    return None


def _latest_version(folder: Path) -> Path | None:
    versions = [v for v in folder.iterdir() if v.is_dir() and v.name.isdigit() and (v / MODEL_FILE).is_file()]
    return max(versions, key=lambda v: int(v.name)) / MODEL_FILE if versions else None


def _named(models: dict[str, Path], source: Path, origin: str | None = None) -> dict[str, Path]:
    for name in models:
        if not _NAME.match(name) or len(name) > 128:
            raise UsageError(f"model name {name[:128]!r} (from {origin or source}) must be at most 128 letters, "
                             "digits, '_', '-' or '.', starting with a letter or digit")
    return models
