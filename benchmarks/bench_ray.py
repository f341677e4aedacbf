"""The book's MLP sparsity search, serial and as Ray tasks on a local two-node Ray cluster (loopback, one CPU each).

Side by side in one run: the kept try (must be the same), wall and CPU time of each, their ratio (target: Ray
within 1.2x of serial on this 2-core machine, where no speed-up can show) and where the tries ran (the first in
the driver, the others as Ray tasks only if it missed, at most one per CPU of the cluster in flight). What a larger
cluster would give, from the serial run's own try times: with a CPU per try, the tries after the first run at once,
so that part of the search takes its slowest try instead of their sum. Needs ``../shared`` (the book's model and the
Fashion sample) and Ray (``pip install -e ".[ray]"``). Writes benchmarks/results/ray.json and ray.md:

    python benchmarks/bench_ray.py
"""

from __future__ import annotations

import os
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


def _start_cluster(cli: str, port: int, common: list[str]) -> None:
    """``ray start --head`` and one worker node; again when a node missed Ray's 30 s to register (a loaded machine)."""
    for _ in range(3):
        done = subprocess.run(
            [cli, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            done = subprocess.run(
                [cli, "start", "--address", f"127.0.0.1:{port}", *common], capture_output=True, text=True, check=False
            )
        if done.returncode == 0:
            return
        subprocess.run([cli, "stop", "--force"], check=False, capture_output=True)
    sys.exit(f"ray start failed: {done.stderr.strip()[-500:]}")


def _search(model, data, ray_address=None):
    from deploykit.sparsity import PruneConfig, SearchConfig, search_sparsity

    start, cpu = time.perf_counter(), time.process_time()
    _, report = search_sparsity(
        model, data, 0.01, config=SearchConfig(), prune_config=PruneConfig(epochs=10, distill=True), ray=ray_address
    )
    return report, time.perf_counter() - start, time.process_time() - cpu


def _larger(serial) -> dict:
    """What a cluster with a CPU per try gives, from the serial tries' own seconds (those up to the kept one): the
    first try in the driver, then every other one at once."""
    seconds = [t.seconds for t in serial.tries if t.seconds]
    total, slowest = sum(seconds), (seconds[0] if seconds else 0.0) + max(seconds[1:], default=0.0)
    return {
        "tries": len(seconds),
        "serial_tries_s": total,
        "parallel_tries_s": slowest,
        "speedup": total / slowest if slowest else 1.0,
    }


#: Serial and Ray searches, interleaved (serial, Ray, serial, Ray ...).
REPEATS = 2


def _kept(report):
    return None if report.kept is None else report.kept.target


def main() -> None:
    if not FASHION.exists() or not BOOK.exists():
        sys.exit(f"needs {FASHION} and {BOOK} (../shared beside the project)")
    # one authentication mode for the head, the worker node and this driver (a token left in ~/.ray by a local
    # ray.init() turns it on for `ray start --head` only, and the worker node is then refused); before Ray is
    # imported, which reads it once
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    from deploykit.data.dataset import load_dataset
    from deploykit.io.models import load_model

    data, model = load_dataset(str(FASHION)), load_model(str(BOOK))
    cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    port = _port()
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    runs: dict[str, list] = {"serial": [], "ray": []}
    try:
        _start_cluster(cli, port, common)
        for _ in range(REPEATS):  # interleaved: a shared machine's load moves between runs, the pairs see the same
            runs["serial"].append(_search(model, data))
            runs["ray"].append(_search(model, data, f"127.0.0.1:{port}"))
            cpus = int(ray.cluster_resources().get("CPU", 0))
            ray.shutdown()  # the next Ray search connects again, as a new run does
            say = f"serial {runs['serial'][-1][1]:.0f} s, Ray {runs['ray'][-1][1]:.0f} s wall"
            print(say, file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
        subprocess.run([cli, "stop", "--force"], check=False, capture_output=True)
    serial, remote = runs["serial"][-1][0], runs["ray"][-1][0]
    serial_wall, ray_wall = (sum(r[1] for r in runs[k]) / REPEATS for k in ("serial", "ray"))
    serial_cpu, ray_cpu = (sum(r[2] for r in runs[k]) / REPEATS for k in ("serial", "ray"))
    same = all(_kept(a[0]) == _kept(b[0]) for a, b in zip(runs["serial"], runs["ray"]))

    rows = {
        "serial": {
            "kept": _kept(serial),
            "wall": serial_wall,
            "cpu_driver": serial_cpu,
            "tries": len(serial.tries),
            "walls": [r[1] for r in runs["serial"]],
        },
        "ray": {
            "kept": _kept(remote),
            "wall": ray_wall,
            "cpu_driver": ray_cpu,
            "walls": [r[1] for r in runs["ray"]],
            "tries": len(remote.tries),
            "in_driver": sum("in the driver" in t.note for t in remote.tries),
            "ray_tasks": sum("as a Ray task" in t.note for t in remote.tries),
            "in_flight_max": min(cpus, sum("as a Ray task" in t.note for t in remote.tries)),
            "cluster_cpus": cpus,
            "where": [t.note for t in remote.tries],
        },
        "same_kept": same,
        "wall_ratio": ray_wall / serial_wall,
        "cpu_ratio": ray_cpu / serial_cpu,
        "pair_ratios": [b[1] / a[1] for a, b in zip(runs["serial"], runs["ray"])],
        "larger_cluster": _larger(serial),
    }
    big = rows["larger_cluster"]
    md = [
        "# Sparsity search: serial vs Ray (2 local nodes, 1 CPU each)",
        "",
        f"{REPEATS} runs of each, interleaved (serial, Ray, serial, Ray); mean wall (each run's) and driver CPU.",
        "",
        "| run | kept | tries | wall s | driver CPU s |",
        "|---|---:|---:|---:|---:|",
        f"| serial | {_kept(serial)} | {len(serial.tries)} (stops at the first kept) | {serial_wall:.0f} "
        f"({', '.join(f'{w:.0f}' for w in rows['serial']['walls'])}) (loaded) | {serial_cpu:.0f} |",
        (
            f"| Ray | {_kept(remote)} | {len(remote.tries)} ({rows['ray']['in_driver']} in the driver, "
            f"{rows['ray']['ray_tasks']} as Ray tasks, at most {rows['ray']['in_flight_max']} in flight) | "
            f"{ray_wall:.0f} ({', '.join(f'{w:.0f}' for w in rows['ray']['walls'])}) (loaded) | {ray_cpu:.0f} |"
        ),
        "",
        (
            f"Same kept try in every pair: {rows['same_kept']}; Ray / serial wall: {rows['wall_ratio']:.2f}x (pairs: "
            + ", ".join(f"{r:.2f}x" for r in rows["pair_ratios"])
            + f"; target <= 1.2x on 2 shared cores); driver CPU {rows['cpu_ratio']:.2f}x. Where the last run's tries "
            "ran: " + "; ".join(rows["ray"]["where"]) + "."
        ),
        "",
        (
            f"A larger cluster (from the serial run's try times): the {big['tries']} tries up to the kept one took "
            f"{big['serial_tries_s']:.0f} s one after another. The first runs in the driver; when it misses, a cluster "
            "with a CPU per remaining target runs them all in flight at once, so the search takes the first try plus "
            f"the slowest of the others: {big['parallel_tries_s']:.0f} s here ({big['speedup']:.1f}x on the tries). "
            "A search that keeps its first target gains nothing from more CPUs, and pays nothing for Ray either: its "
            "workers are readied (TensorFlow imported at the lowest priority) while the driver's try runs."
        ),
    ]
    write_results("ray", rows, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
