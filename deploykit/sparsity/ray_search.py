"""The sparsity search's tries on Ray (Ray core): the first in the driver, the others as tasks only if it missed.

The tries of a search are independent of each other (each prunes a copy of the same model at its own target,
with the same seed). The highest target runs first in the driver itself (the serial search most often keeps it),
while a thread connects to Ray and readies a worker per CPU (TensorFlow imported at the lowest priority, the model
loaded): a search whose first try is kept pays no Ray start-up. Only if it missed do the next targets run as one
Ray task each, as many at once as the cluster has CPUs, a new one starting when one is done, none once a try is
within the budget; the search then keeps what the serial search keeps: the highest target within the budget.
Tries below it that ran are reported as not needed, a task that fails is that try's failure (its error in the
try's note), and each try's note says where it ran (in the driver, or as a Ray task). The model travels as a
``.keras`` file's bytes, the data and the teacher's outputs through Ray's object store, and deploykit itself as a
``py_modules`` entry of the job's runtime environment, so a cluster's nodes need only the same Python packages
(``pip install "deploykit[ray]"``). Ray is an optional dependency: importing this module does not import it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from deploykit.errors import UsageError

#: ``[search] ray`` / ``--ray`` without an address: start (or join) a Ray on this machine.
LOCAL = "local"


def _ray():
    """The ``ray`` module, or the UsageError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError('--ray needs Ray: pip install "deploykit[ray]"') from None
    return ray


def connect(address: str) -> None:
    """``ray.init`` once per process: a local Ray for :data:`LOCAL`, else the cluster at ``address``."""
    ray = _ray()
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
        _cached(blob), data, config, target, layer_targets, teacher, original, metric, lambda _m: None
    )
    return attempt, None if pruned is None else _to_bytes(pruned), record, where()


#: The search's model in a warm worker, by its bytes' digest: the tries that worker runs next skip loading it.
_MODELS: dict[str, Any] = {}


def _cached(blob: bytes):
    """The model of ``blob``, loaded once per worker process (a try prunes a copy: the model itself stays as is)."""
    key = hashlib.sha256(blob).hexdigest()
    if key not in _MODELS:
        _MODELS.clear()  # one search's model at a time
        _MODELS[key] = _from_bytes(blob)
    return _MODELS[key]


def _warm_up(blob: bytes) -> tuple[str, int]:
    """A Ray task readying its worker for the tries while the first runs in the driver: TensorFlow and deploykit
    imported at the lowest priority (on a node shared with the driver the import takes only idle CPU), then the
    model loaded. Returns where it ran."""

    def imports():
        if sys.platform == "linux":  # the nice value is a thread's own on Linux: this thread only, not the worker
            os.setpriority(os.PRIO_PROCESS, 0, 19)
        import tensorflow_model_optimization  # noqa: F401  (TF-MOT, which prunes)

        from deploykit.backend import keras  # noqa: F401  (TensorFlow and the Keras the tries use)
        from deploykit.sparsity import magnitude, tuning  # noqa: F401  (the try's own modules)

    thread = threading.Thread(target=imports, daemon=True)
    thread.start()
    thread.join()
    _cached(blob)
    return where()


def _no_sigterm_warning(record: logging.LogRecord) -> bool:
    return "SIGTERM handler is not set" not in record.getMessage()


class _Background:
    """Ray connected, the inputs put in its object store and ``warm`` workers readied, in a thread: the driver's
    own first try runs meanwhile, so a search whose first try is kept pays no Ray start-up."""

    def __init__(self, address: str, blob: bytes, data, teacher, warm: int):
        """``blob``: the model's bytes (saved by the caller: Keras saves in the thread that runs it); ``warm``: the
        tries that may follow the first (no more workers are warmed than the cluster has CPUs)."""
        self.refs: tuple | None = None
        self.error: BaseException | None = None
        self._args = (address, blob, data, teacher, warm)
        self._thread = threading.Thread(target=self._run, name="deploykit-ray-warm-up", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import ray

        address, blob, data, teacher, warm = self._args
        # ray.init outside the main thread leaves the process's SIGTERM handling as it is (deploykit's), and warns
        logging.getLogger("ray._private.worker").addFilter(_no_sigterm_warning)  # once: the same filter
        try:
            connect(address)
            blob = ray.put(blob)
            warm_up = ray.remote(num_cpus=1, max_retries=0)(_warm_up)
            warm = min(warm, int(ray.cluster_resources().get("CPU", 1)))
            self.refs = (blob, ray.put(data), ray.put(teacher), [warm_up.remote(blob) for _ in range(warm)])
        except BaseException as exc:  # noqa: BLE001  (said when the driver needs Ray: see ready())
            self.error = exc

    def ready(self) -> tuple:
        """(model ref, data ref, teacher ref, warm-up refs) once connected; Ray's own error if it could not."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.refs


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
    stopper=None,
) -> list[tuple[Any, Any, Any]]:
    """The ``(target, layer_targets)`` tried with ``run_try`` (the search's own try): the first (highest) in this
    process while Ray connects and warms a worker per CPU, the others only if it missed, as Ray tasks, as many at
    once as the cluster has CPUs, taken in order; ``(SearchTry, pruned model or None, record or None)`` each, the
    try's note saying where it ran. Once a try is ``accept``-ed no further try starts (those already running are
    reported: the serial search never started them, :func:`keep_first` says they were not needed). A task that
    fails (a worker lost, an exception) is that try's failure: ``failed(target, layer_targets, note)``.
    ``stopper``: the first try's deadline callback (a time budget's)."""
    ray = _ray()  # not installed: said before the first try
    background = _Background(address, _to_bytes(model), data, teacher, len(plans) - 1)
    if len(plans) > 1:
        say(f"  the first of {len(plans)} tries runs here while Ray readies its workers for the others")
    attempt, pruned, record = run_try(model, data, config, *plans[0], teacher, original, metric, say, stopper)
    blob, data_ref, teacher_ref, _warm = background.ready()
    here = f"{_ran_on((ray.get_runtime_context().get_node_id(), os.getpid()), _node_names())}, in the driver"
    attempt.note = f"{attempt.note}; {here}" if attempt.note else here
    out = [(attempt, pruned, record)]
    if accept(attempt) or len(plans) == 1:
        return out
    plans = plans[1:]
    width = max(1, min(len(plans), int(ray.cluster_resources().get("CPU", 1))))
    say(f"  {len(plans)} more tries as Ray tasks on {_cluster()}, {width} at once")
    remote = ray.remote(num_cpus=1, max_retries=0)(_run_try)

    def start(i: int):
        return remote.remote(run_try, blob, data_ref, config, *plans[i], teacher_ref, original, metric)

    refs, names, kept = [start(i) for i in range(width)], _node_names(), False
    for i, (target, layer_targets) in enumerate(plans):
        if i == len(refs):  # a try was kept: the serial search stops there, no further try starts
            break
        out.append(_result(ray, refs[i], target, layer_targets, failed, names))
        kept = kept or accept(out[-1][0])
        if not kept and len(refs) < len(plans):  # a CPU is free: the next target starts
            refs.append(start(len(refs)))
    return out


def _ran_on(node: tuple[str, int], names: dict[str, str]) -> str:
    return f"ran on node {names.get(node[0], node[0][:8])} ({node[0][:8]}), pid {node[1]}"


def _result(ray, ref, target, layer_targets, failed, names: dict[str, str]) -> tuple[Any, Any, Any]:
    """One try's task, waited for: (SearchTry saying where it ran, pruned model or None, record or None)."""
    try:
        attempt, pruned, record, node = ray.get(ref)
    except Exception as exc:  # noqa: BLE001  (Ray wraps the task's error: it is this try's failure)
        return failed(target, layer_targets, f"Ray task failed: {_first_line(exc)}"), None, None
    ran = f"{_ran_on(node, names)}, as a Ray task"
    attempt.note = f"{attempt.note}; {ran}" if attempt.note else ran
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
