"""The sparsity search's tries as Ray tasks (Ray core): the first alone, then as many as the cluster has CPUs.

The tries of a search are independent of each other (each prunes a copy of the same model at its own target,
with the same seed), so they run as one Ray task each: the highest target alone first (the serial search most
often keeps it), then as many as the cluster has CPUs, a new one starting when one is done, none once a try is
within the budget (a small cluster does not pay for tries the serial search never starts; a cluster with a CPU
per target runs all the others at once); the search then keeps what the serial search keeps: the highest
target within the budget. Tries below it that ran are reported as not needed, a task that fails is that try's
failure (its error in the try's note), and each try's note says where it ran. The
model travels as a ``.keras`` file's bytes, the data and the teacher's outputs through Ray's object store, and
deploykit itself as a ``py_modules`` entry of the job's runtime environment, so a cluster's nodes need only the
same Python packages (``pip install "deploykit[ray]"``). Ray is an optional dependency: importing this module
does not import it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from deploykit.errors import UsageError

#: ``[search] ray`` / ``--ray`` without an address: start (or join) a Ray on this machine.
LOCAL = "local"


def connect(address: str) -> None:
    """``ray.init`` once per process: a local Ray for :data:`LOCAL`, else the cluster at ``address``."""
    try:
        import ray
    except ImportError:
        raise UsageError('--ray needs Ray: pip install "deploykit[ray]"') from None
    if ray.is_initialized():
        return
    import deploykit

    package = str(Path(deploykit.__file__).parent)
    ray.init(
        address=None if address == LOCAL else address,
        runtime_env={"py_modules": [package]},
        logging_level="WARNING",
        log_to_driver=False,
        include_dashboard=False,
    )


def _to_bytes(model) -> bytes:
    from deploykit.io.models import save_model_like

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        save_model_like(model, path, False)
        return path.read_bytes()


def _from_bytes(blob: bytes):
    from deploykit.io.models import load_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(blob)
        return load_model(str(path), unsafe=True)


def where() -> tuple[str, int]:
    """(Ray node id, process id) of the code running (a Ray task)."""
    import ray

    return ray.get_runtime_context().get_node_id(), os.getpid()


def _node_names() -> dict[str, str]:
    """Ray node id -> the address its node was started with (``ray start --node-ip-address``)."""
    import ray

    return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes()}


def _run_try(run_try, blob: bytes, data, config, target, layer_targets, teacher, original, metric):
    """One try inside a Ray task: (SearchTry, the pruned model's bytes or None, prune's report, where it ran)."""
    attempt, pruned, record = run_try(
        _from_bytes(blob), data, config, target, layer_targets, teacher, original, metric, lambda _m: None
    )
    return attempt, None if pruned is None else _to_bytes(pruned), record, where()


def run_tries(
    run_try,
    failed,
    model,
    data,
    config,
    plans: list[tuple[float, dict[str, float]]],
    teacher,
    original,
    metric,
    say,
    address: str,
    accept=lambda attempt: False,
) -> list[tuple[Any, Any, Any]]:
    """The ``(target, layer_targets)`` as Ray tasks running ``run_try`` (the search's own try), as many at once as
    the cluster has CPUs, taken in order; ``(SearchTry, pruned model or None, record or None)`` each, the try's
    note saying where it ran. Once a try is ``accept``-ed no further try starts (those already running are
    reported: the serial search never started them, :func:`keep_first` says they were not needed). A task that
    fails (a worker lost, an exception) is that try's failure: ``failed(target, layer_targets, note)``."""
    import ray

    connect(address)
    remote = ray.remote(num_cpus=1, max_retries=0)(_run_try)
    blob, data_ref, teacher_ref = ray.put(_to_bytes(model)), ray.put(data), ray.put(teacher)
    width = max(1, min(len(plans), int(ray.cluster_resources().get("CPU", 1))))
    say(f"  {len(plans)} tries as Ray tasks on {_cluster()}: the first alone, then {width} at once")

    def start(i: int):
        return remote.remote(run_try, blob, data_ref, config, *plans[i], teacher_ref, original, metric)

    # The highest target runs alone: the serial search keeps it more often than not, and a try started beside it
    # would only share its CPUs (on 2 cores, Ray was 2.67x slower than serial with two tries from the start).
    refs = [start(0)]
    out, names, kept = [], _node_names(), False
    for i, (target, layer_targets) in enumerate(plans):
        if i == len(refs):  # a try was kept: the serial search stops there, no further try starts
            break
        out.append(_result(ray, refs[i], target, layer_targets, failed, names))
        kept = kept or accept(out[-1][0])
        while not kept and len(refs) < min(len(plans), i + 1 + width):  # CPUs free: the next targets start
            refs.append(start(len(refs)))
    return out


def _result(ray, ref, target, layer_targets, failed, names: dict[str, str]) -> tuple[Any, Any, Any]:
    """One try's task, waited for: (SearchTry saying where it ran, pruned model or None, record or None)."""
    try:
        attempt, pruned, record, node = ray.get(ref)
    except Exception as exc:  # noqa: BLE001  (Ray wraps the task's error: it is this try's failure)
        return failed(target, layer_targets, f"Ray task failed: {_first_line(exc)}"), None, None
    ran = f"node {names.get(node[0], node[0][:8])} ({node[0][:8]}), pid {node[1]}"
    attempt.note = f"{attempt.note}; ran on {ran}" if attempt.note else f"ran on {ran}"
    return attempt, None if pruned is None else _from_bytes(pruned), record


def _cluster() -> str:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return f"{len(nodes)} node(s), {int(ray.cluster_resources().get('CPU', 0))} CPUs"


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def keep_first(results: list[tuple[Any, Any, Any]], report, model, say, explain=None):
    """What the serial search returns from the same tries: the first (highest target) the same accept rule takes
    is kept, the tries after it reported as not needed; ``(model, report)``. ``explain(attempt)``: the serial
    search's note of a measured try it did not keep (what it missed: accuracy or NLL)."""
    from deploykit.stats import accepted

    budget, original = report.budget, report.original
    for attempt, pruned, record in results:
        report.tries.append(attempt)
        if report.kept is not None:
            attempt.note = f"not needed: a higher target was kept ({attempt.note})"
            continue
        value = getattr(attempt, budget.metric.value)
        if accepted(attempt, budget):
            attempt.kept, report.kept, report.report = True, attempt, record
            say(
                f"kept {attempt.setting()}: validation {budget.metric.value} {value:.4g} "
                f"({budget.change(original, value)})"
            )
            model = pruned
        else:
            why = explain(attempt) if explain is not None else f"{budget.change(original, value)} vs the original"
            attempt.note = f"{why}; {attempt.note}" if value is not None else attempt.note
    return model, report
