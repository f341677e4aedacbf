"""Size limits on what deploykit reads, checked on declared sizes before anything is inflated.

A compressed file (an ``.npz``, a ``.keras`` zip, a gzipped IDX file) or a
header can declare far more than it holds on disk: a 1 MB ``.npz`` can
declare 20,000,000 x 64 values. Each reader compares what the file declares
with a limit before it reads or allocates, and refuses with one line naming
the environment variable that raises the limit for a file you trust.

What a model file declares may grow with what it really holds on disk: a
file of real weights is as large as the weights it declares (or a few times
smaller, deflated and pruned), while a bomb declares thousands of times its
size. So a model's limit is its default or ``per_disk_byte`` times the
file's size on disk, whichever is larger, up to ``cap``: VGG16 or ConvNeXt
loads as saved, and a 1 MB file still cannot declare a gigabyte.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from deploykit.errors import ConfigError, DataError, DeployKitError, ModelLoadError

_MIB = 1 << 20


@dataclass(frozen=True)
class Limit:
    """A byte limit with its default and the environment variable that overrides it."""

    env: str
    default: int
    what: str  # "data" or "model": the start of the message
    error: type[DeployKitError]
    per_disk_byte: int = 0  # declared bytes allowed per byte the file holds on disk (0: the default only)
    cap: int = 0  # the most the size on disk can raise the limit to

    def value(self, on_disk: int | None = None) -> int:
        """The limit in force: the environment variable if set (read each time), else the default, raised for a
        file of ``on_disk`` bytes to ``per_disk_byte`` times that, up to ``cap``."""
        raw = os.environ.get(self.env, "").strip()
        if not raw:
            if on_disk and self.per_disk_byte:
                return max(self.default, min(self.cap, self.per_disk_byte * on_disk))
            return self.default
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value <= 0:
            raise ConfigError(f"{self.env} must be a positive number of bytes, got {raw!r}")
        return value

    def check(self, path, declared: int, detail: str, on_disk: int | None = None) -> None:
        """Raise this limit's error when ``declared`` bytes exceed it; ``detail`` says what declared them, and
        ``on_disk`` (when known) is the size of the file (or folder) that declared them."""
        limit = self.value(on_disk)
        if declared > limit:
            raise self.error(
                f"{self.what} {path}: {detail} declares {_size(declared)}, over the {_size(limit)} limit "
                f"(refused before reading it); if you trust the file, raise the limit with {self.env}=BYTES"
            )


def _size(n: int) -> str:
    return f"{n / _MIB:,.1f} MiB" if n >= _MIB else f"{n:,} bytes"


#: Every model file: its size, the uncompressed members of a ``.keras`` zip, and the weights its config declares
#: (a dense network of a few million parameters is tens of MiB; ConvNeXtXLarge is 1.4 GiB, held on disk).
MODEL_BYTES = Limit("DEPLOYKIT_MAX_MODEL_BYTES", 256 * _MIB, "model", ModelLoadError, 32, 4096 * _MIB)
#: A model's JSON config (``config.json``, ``metadata.json``, ``keras_metadata.pb``): a dense network's is kilobytes.
MODEL_CONFIG_BYTES = Limit("DEPLOYKIT_MAX_CONFIG_BYTES", 16 * _MIB, "model", ModelLoadError)
#: A dataset, counted as the float32 values it becomes (rows x features x 4 bytes, labels included).
DATA_BYTES = Limit("DEPLOYKIT_MAX_DATA_BYTES", 1024 * _MIB, "data", DataError)
#: An ONNX file, with the external data it names (read into memory at load; real bytes on disk, not declared).
ONNX_BYTES = Limit("DEPLOYKIT_MAX_ONNX_BYTES", 4096 * _MIB, "model", ModelLoadError)
#: One tensor an ONNX file declares before anything is allocated: a row of an input, a ConstantOfShape, Expand or
#: Tile output with a constant shape (a 2.8 KB file can declare 2 GB).
TENSOR_BYTES = Limit("DEPLOYKIT_MAX_TENSOR_BYTES", 256 * _MIB, "model", ModelLoadError)
#: A TOML config file (a few kilobytes).
CONFIG_FILE_BYTES = Limit("DEPLOYKIT_MAX_CONFIG_FILE_BYTES", 1 * _MIB, "config", ConfigError)
