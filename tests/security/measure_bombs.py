"""Measure how cheaply each bomb of issue 13 item 6 is refused (not a test: a figure for the notes).

    PYTHONPATH=. python -m tests.security.measure_bombs npz_real   # the attack's own 1.26 MB .npz
                                                                   # (building it: ~10 s CPU)
    PYTHONPATH=. python -m tests.security.measure_bombs keras      # a .keras whose config.json inflates to 1 GiB

Prints the file size, the time to refuse it, the process's peak RSS and the error line.
"""

from __future__ import annotations

import io
import resource
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from deploykit.errors import DeployKitError
from tests.security import hostile


def real_npz_bomb(folder: Path, rows: int = 20_000_000, cols: int = 64) -> Path:
    """The attack's file: rows x cols uint8 zeros really compressed (1.26 MB), streamed so building it stays small."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (rows, cols)})
    path = folder / "real_bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            chunk = bytes(1 << 24)
            for _ in range(rows * cols // len(chunk)):
                fh.write(chunk)
            fh.write(bytes(rows * cols % len(chunk)))
        labels = io.BytesIO()
        np.save(labels, np.zeros(rows, np.uint8))
        zf.writestr("y.npy", labels.getvalue())
    return path


def main(kind: str) -> None:
    folder = Path(tempfile.mkdtemp())
    if kind == "npz_real":
        from deploykit.data.dataset import load_dataset as load

        path = real_npz_bomb(folder)
    else:
        from deploykit.io.models import load_model as load

        path = hostile.keras_zip_bomb(folder, 1 << 30)
    start = time.perf_counter()
    try:
        load(path)
    except DeployKitError as exc:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{kind}: {path.stat().st_size / 1e6:.2f} MB file refused in {time.perf_counter() - start:.3f} s, "
            f"peak RSS of the whole process {peak:.0f} MB: {exc}"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "npz_real")
