"""The run's other independent work as Ray tasks: an ensemble's members and the int8 fallback tries.

``--ray [ADDRESS]`` (``[search] ray``, ``ray=``) puts the sparsity search's tries on Ray
(:mod:`deploykit.sparsity.ray_search`); the same switch puts here:

- **ensemble members**: each member's whole ``optimize`` (fold, prune, int8 ONNX) as one task, every member at once;
  its files come back as bytes and its progress lines are said when it is back, with where it ran. A member that
  fails fails the ensemble as serially (the first failing member by index is the error).
- **int8 fallbacks**: the configured int8 setting is tried first in this process (it usually passes: no Ray cost);
  when it misses, every fallback still within the time budget is exported at once as a task and the rows are
  measured here in the serial order, the first that passes kept; the exports after it are dropped as not needed,
  so the tries reported are the serial run's, each saying where it ran.

Both are decided exactly as serially (the same seeds, the same order, the same accept rule). Ray is optional:
importing this module does not import it.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploykit.errors import DeployKitError, StepError, UsageError
from deploykit.sparsity.ray_search import _cluster, _first_line, _from_bytes, _node_names, _ran_on, connect, where


def model_bytes(model) -> bytes:
    """A model as ``.keras`` bytes, in its own framework (a Keras 3 model as a Keras 3 file)."""
    from deploykit.backend import is_tf_keras_model
    from deploykit.io.models import save_model_like

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        save_model_like(model, path, not is_tf_keras_model(model))
        return path.read_bytes()


def _cause(exc: BaseException) -> BaseException | None:
    """The task's own exception inside Ray's wrapper (None for a worker lost, a task cancelled...)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else None


# --- ensemble members ------------------------------------------------------------------------------------------


def _member_task(member: Callable, optimize, blob: bytes, data, k: int, minutes: float | None, kwargs: dict):
    """One member inside a Ray task: ({file name: bytes}, its progress lines, where it ran)."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="deploykit-member-") as tmp:
        member(optimize, _from_bytes(blob), data, k, Path(tmp), lines.append, minutes, **kwargs)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    return files, lines, where()


def run_members(
    member: Callable,
    optimize,
    models: list,
    data,
    folder: Path,
    say: Callable[[str], None],
    address: str,
    deadline: tuple[float, float] | None,
    **kwargs: Any,
) -> None:
    """Every ``member(optimize, model, data, k, folder, say, minutes, **kwargs)`` as a Ray task (one CPU each);
    their files written into ``folder``. With a time budget each member gets the members' share divided by the
    rounds the cluster needs (members / CPUs, rounded up) instead of by the members."""
    import ray

    connect(address)
    options = kwargs.pop("options", {})
    if "config" in options:  # a member's own search runs inside its task, not as tasks of its own
        options = {**options, "config": _serial(options["config"])}
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    rounds = math.ceil(len(models) / cpus)
    minutes = None if deadline is None else max(0.05, (deadline[1] - time.monotonic()) / rounds / 60.0)
    say(f"  {len(models)} members as Ray tasks on {_cluster()}")
    remote = ray.remote(num_cpus=1, max_retries=0)(_member_task)
    data_ref = ray.put(data)
    refs = [
        remote.remote(member, optimize, model_bytes(m), data_ref, k, minutes, {**kwargs, "options": options})
        for k, m in enumerate(models)
    ]
    names, failure = _node_names(), None
    for k, ref in enumerate(refs):
        try:
            files, lines, node = ray.get(ref)
        except Exception as exc:  # noqa: BLE001  (Ray wraps the task's error: it is this member's failure)
            failure = failure or _member_failure(k, exc)
            continue
        say(f"member {k + 1}/{len(models)} {_ran_on(node, names)}")
        for line in lines:
            say(line)
        for name, blob in files.items():
            (folder / name).write_bytes(blob)
    if failure is not None:
        raise failure


def _member_failure(k: int, exc: BaseException) -> BaseException:
    """The error a failed member task stands for: its own typed error, else a StepError naming the member."""
    cause = _cause(exc)
    if isinstance(cause, DeployKitError):
        return cause
    return StepError(f"ensemble member {k}: Ray task failed: {_first_line(exc)}", step="ensemble")


def _serial(config):
    """``config`` without Ray: what runs inside a task."""
    return dataclasses.replace(config, plan=dataclasses.replace(config.plan, ray=None))


# --- int8 fallbacks --------------------------------------------------------------------------------------------


def _export_task(export: Callable, variant, blob: bytes, data, options: dict):
    """One int8 setting exported inside a Ray task: (its ExportRecord or None, the file's bytes, error, where)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            record = export(variant, _from_bytes(blob), Path(tmp), data, **options)
        except UsageError:
            raise
        except DeployKitError as exc:
            return None, b"", str(exc), where()
        return record, record.path.read_bytes(), "", where()


def search_int8_on_ray(
    variants: list,
    make: Callable,
    measure: Callable,
    allowed: Callable,
    export: Callable,
    model,
    folder: Path,
    data,
    options: dict,
    address: str,
    say: Callable[[str], None],
) -> list:
    """:func:`~deploykit.pipeline.int8_search.search_int8` with the fallbacks as Ray tasks: the same attempts, in the
    same order, the same one kept. ``make`` / ``measure`` / ``allowed`` as there; ``export(variant, model, folder,
    data, **options)`` makes one setting's file in a task."""
    from deploykit.pipeline.int8_search import Int8Attempt, search_int8

    attempts = search_int8(variants[:1], make, measure)
    rest = []
    for variant in variants[1:]:
        if not allowed(variant):
            break
        rest.append(variant)
    if attempts[-1].passed or not rest:
        return attempts
    import ray

    connect(address)
    say(f"  {len(rest)} int8 fallback(s) as Ray tasks")
    remote = ray.remote(num_cpus=1, max_retries=0)(_export_task)
    blob, data_ref = ray.put(model_bytes(model)), ray.put(data)
    refs = [remote.remote(export, v, blob, data_ref, options) for v in rest]
    names = _node_names()
    for variant, ref in zip(rest, refs):
        say(f"  trying {variant.describe()}")
        try:
            record, content, error, node = ray.get(ref)
        except Exception as exc:  # noqa: BLE001  (Ray wraps the task's error: it is this try's failure)
            cause = _cause(exc)
            if isinstance(cause, UsageError):
                raise cause from None
            attempts.append(Int8Attempt(variant, None, f"Ray task failed: {_first_line(exc)}"))
            continue
        ran = _ran_on(node, names)
        if record is None:
            attempts.append(Int8Attempt(variant, None, error, ran))
            continue
        path = folder / variant.file
        path.write_bytes(content)
        attempts.append(Int8Attempt(variant, measure(dataclasses.replace(record, path=path)), "", ran))
        if attempts[-1].passed:
            break
    for ref in refs[len(attempts) - 1 :]:  # the exports after the kept one are not needed
        try:
            ray.cancel(ref)
        except Exception:  # noqa: BLE001, S110  (a task already finished cannot be cancelled: nothing to do)
            pass
    return attempts
