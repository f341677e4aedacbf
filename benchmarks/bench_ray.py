"""The book's MLP sparsity search, serial and as Ray tasks on a local two-node Ray cluster (loopback, one CPU each).

Side by side in one run: the kept try (must be the same), wall and CPU time of each, their ratio (target: Ray
within 1.2x of serial on this 2-core machine, where no speed-up can show) and the tries in flight at once (what a
larger cluster would run in parallel: with one CPU per try, N nodes run N tries at once, so the search's wall time
tends to its slowest try). Needs ``../shared`` (the book's model and the Fashion sample) and Ray
(``pip install -e ".[ray]"``). Writes benchmarks/results/ray.json and ray.md:

    python benchmarks/bench_ray.py
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import FASHION, ROOT, write_results  # puts the repository on sys.path

BOOK = ROOT.parent / "shared" / "models" / "book_fashion_bn_dropout.keras"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _search(model, data, ray_address=None):
    from deploykit.sparsity import PruneConfig, SearchConfig, search_sparsity

    start, cpu = time.perf_counter(), time.process_time()
    _, report = search_sparsity(
        model, data, 0.01, config=SearchConfig(), prune_config=PruneConfig(epochs=10, distill=True), ray=ray_address
    )
    return report, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    if not FASHION.exists() or not BOOK.exists():
        sys.exit(f"needs {FASHION} and {BOOK} (../shared beside the project)")
    import ray

    from deploykit.data import load_dataset
    from deploykit.io import load_model

    data, model = load_dataset(str(FASHION)), load_model(str(BOOK))
    serial, serial_wall, serial_cpu = _search(model, data)
    cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    port = _port()
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    try:
        subprocess.run(
            [cli, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common], check=True
        )
        subprocess.run([cli, "start", "--address", f"127.0.0.1:{port}", *common], check=True)
        remote, ray_wall, ray_cpu = _search(model, data, f"127.0.0.1:{port}")
        in_flight = int(ray.cluster_resources().get("CPU", 0))
    finally:
        ray.shutdown()
        subprocess.run([cli, "stop", "--force"], check=False)

    def kept(report):
        return None if report.kept is None else report.kept.target

    rows = {
        "serial": {"kept": kept(serial), "wall": serial_wall, "cpu_driver": serial_cpu, "tries": len(serial.tries)},
        "ray": {
            "kept": kept(remote),
            "wall": ray_wall,
            "cpu_driver": ray_cpu,
            "tries": len(remote.tries),
            "in_flight": in_flight,
            "where": [t.note for t in remote.tries],
        },
        "same_kept": kept(serial) == kept(remote),
        "wall_ratio": ray_wall / serial_wall,
    }
    md = [
        "# Sparsity search: serial vs Ray (2 local nodes, 1 CPU each)",
        "",
        "| run | kept | tries | wall s | driver CPU s |",
        "|---|---:|---:|---:|---:|",
        f"| serial | {kept(serial)} | {len(serial.tries)} (stops at the first kept) | {serial_wall:.0f} | "
        f"{serial_cpu:.0f} |",
        (
            f"| Ray | {kept(remote)} | {len(remote.tries)} (all at once, {in_flight} in flight) | {ray_wall:.0f} | "
            f"{ray_cpu:.0f} |"
        ),
        "",
        (
            f"Same kept try: {rows['same_kept']}; Ray / serial wall: {rows['wall_ratio']:.2f}x (target <= 1.2x on 2 "
            "cores). With one CPU per try a cluster of N nodes runs N tries at once: the search's wall time tends to "
            "its slowest try instead of the sum of the tries up to the kept one."
        ),
    ]
    write_results("ray", rows, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
