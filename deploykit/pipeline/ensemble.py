"""Deep ensembles through the pipeline: each member optimized (fold, prune, int8 ONNX) within the budget, the
members in one calibrated ONNX model, for ``deploykit ensemble`` and for ``optimize``'s ``[ensemble]`` step
(:mod:`deploykit.pipeline.uncertainty_steps`).

Here, not in :mod:`deploykit.uncertainty.ensemble`, because it runs ``optimize``: the pipeline sits above
the uncertainty package (whose MC model it builds), so the uncertainty package never imports it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.core.contract import ENSEMBLE_FILE, MEMBERS_DIR
from deploykit.errors import DataError, ModelLoadError, StepError, UsageError
from deploykit.pipeline.context import MODEL_FILE, ORIGINAL_FILE
from deploykit.records import Record

#: ``deploykit.pipeline.optimize``: this module sits below the engine that runs its step, so it is given it.
Optimize = Callable[..., Any]


def optimize_members(
    optimize: Optimize,
    models: Sequence,
    data,
    folder: str | os.PathLike,
    progress=None,
    *,
    mc_samples: int | None = None,
    keep_keras: bool = False,
    keras3: bool = False,
    **options,
) -> tuple[list[Path], Path]:
    """Run each model through ``optimize`` (fold, prune, int8-dynamic ONNX); the member files and one original.

    ``options`` are ``optimize``'s options (flat ones, e.g. ``sparsity=0.8``, or ``config=``); the formats,
    variants and MC options are fixed to one int8 ONNX per member. Returns the int8 ONNX paths
    (``member{k}.onnx`` in ``folder``) and the first member's float32 original (as optimize saved it). A
    member whose int8 model misses the accuracy budget is a StepError naming it.

    ``mc_samples`` (MC Dropout inside each member): each member is instead the MC Dropout model of its
    optimized Keras model (BatchNorm kept where folding it would cross a dropout, as ``optimize`` does
    for its MC model), drawing ``mc_samples`` samples and outputting them all, int8-dynamic like the
    deterministic members; the int8 deterministic model still has to meet the budget.

    ``keep_keras``: also keep each member's optimized Keras model as ``member{k}.keras`` in ``folder``
    (the model to fine-tune further, or to build the member's MC model from with :func:`mc_member`); with
    ``keras3`` (the run's input was Keras 3) those files, and the original, are Keras 3 files.

    ``ray`` (an option: ``"local"`` or a Ray cluster's address): every member at once as a Ray task
    (:func:`deploykit.pipeline.ray_work.run_members`), each member's run the same as serially.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _m: None)
    deadline = _deadline(options.pop("time_budget", None), options.pop("started", None))
    address = options.pop("ray", None)
    kwargs = {"mc_samples": mc_samples, "keep_keras": keep_keras, "keras3": keras3, "options": options}
    if address is not None:  # every member at once as a Ray task (deploykit.pipeline.ray_work)
        from deploykit.pipeline.ray_work import run_members

        run_members(_member, optimize, list(models), data, folder, say, address, deadline, **kwargs)
    for k, model in enumerate(models if address is None else ()):
        say(f"member {k + 1}/{len(models)}")
        _member(optimize, model, data, k, folder, say, _member_minutes(deadline, len(models) - k), **kwargs)
    return [folder / f"member{k}.onnx" for k in range(len(models))], folder / ORIGINAL_FILE


def _member(
    optimize: Optimize,
    model,
    data,
    k: int,
    folder: Path,
    say: Callable[[str], None],
    minutes: float | None,
    *,
    mc_samples: int | None,
    keep_keras: bool,
    keras3: bool,
    options: dict,
) -> None:
    """Member ``k`` through ``optimize`` into ``folder``: ``member{k}.onnx`` (and ``.keras``), the first member's
    original; the same whether it runs here or in a Ray task (which sends ``folder``'s files back)."""
    from deploykit.io.models import save_model_like

    with tempfile.TemporaryDirectory(prefix="deploykit-member-") as tmp:
        result = optimize(
            model,
            data,
            out_dir=Path(tmp) / "out",
            formats="onnx",
            quantize="int8-dynamic",
            mc=mc_samples is not None,
            samples=mc_samples,
            progress=_member_progress(say, tmp, f"member {k + 1}"),
            time_budget=minutes,
            **options,
        )
        shipped = [
            r.file for r in result.artifacts if r.format == "onnx" and r.precision == "int8" and r.verdict.shipped
        ]
        if not shipped:
            raise StepError(
                f"ensemble member {k}: no int8 ONNX model within the accuracy budget "
                f"({'; '.join(r.checks for r in result.rejected)})",
                step="ensemble",
            )
        path = folder / f"member{k}.onnx"
        if mc_samples is None:
            shutil.copy(result.out_dir / shipped[0], path)
        else:
            mc_member(result.out_dir / MODEL_FILE, path, mc_samples, data)
        if keep_keras:
            _keep(result.model, result.out_dir / MODEL_FILE, path.with_suffix(".keras"), keras3, save_model_like)
        if k == 0:
            _keep(model, result.out_dir / ORIGINAL_FILE, folder / ORIGINAL_FILE, keras3, save_model_like)


def _keep(model, saved: Path, path: Path, keras3: bool, save_model_like) -> None:
    """A member's .keras file: the one its run saved, or written as Keras 3 when the input was (and it was not)."""
    from deploykit.backend import is_tf_keras_model

    if keras3 and is_tf_keras_model(model):
        save_model_like(model, path, keras3=True)
    else:
        shutil.copy(saved, path)


#: The share of an ensemble's time budget kept for the bundle (one ONNX graph, calibrated and evaluated).
BUNDLE_SHARE = 0.15


def _deadline(minutes: float | None, started: float | None) -> tuple[float, float] | None:
    """(start, end) in ``time.monotonic()`` of the members' share of a time budget (None: no budget)."""
    import time

    if minutes is None:
        return None
    start = time.monotonic() if started is None else started
    return start, start + 60.0 * minutes * (1 - BUNDLE_SHARE)


def _member_minutes(deadline: tuple[float, float] | None, left: int) -> float | None:
    """The next member's time budget: what is left of the members' share, split evenly over those still to run."""
    import time

    if deadline is None:
        return None
    return max(0.05, (deadline[1] - time.monotonic()) / left / 60.0)


def _member_progress(say: Callable[[str], None], tmp: str, name: str) -> Callable[[str], None]:
    """A member's progress lines, its temporary folder named as the member (no temporary path is printed)."""

    def member_say(message: str) -> None:
        say("  " + message.replace(f"{tmp}{os.sep}out", name).replace(tmp, name))

    return member_say


def mc_member(keras_file: Path, path: Path, samples: int, data) -> None:
    """The MC Dropout model of an optimized member, with every sample as an output, int8-dynamic after the int8
    preparation (as the deterministic members are)."""
    from deploykit.export.metadata import ModelMetadata
    from deploykit.io.models import load_model
    from deploykit.sparsity.report import kernel_sparsity, model_sparsity
    from deploykit.uncertainty import MCConfig, export_mc_onnx

    model = load_model(keras_file)
    meta = ModelMetadata(
        sparsity=round(float(model_sparsity(kernel_sparsity(model, {}))), 6)
    )  # as the int8 members record it
    export_mc_onnx(
        model,
        path,
        config=MCConfig(samples=samples, include_samples=True),
        metadata=meta,
        class_names=list(data.class_names) or None,
        quantization="int8-dynamic",
        calibration=data,
    )


@dataclass
class EnsembleRun(Record):
    """What :func:`optimize_ensemble` wrote in its folder: the calibrated ensemble and its sizes against the
    original."""

    bundle: object  # deploykit.uncertainty.bundle.EnsembleBundle
    sizes: object  # deploykit.uncertainty.ensemble.EnsembleSizes
    members: list[Path]


def optimize_ensemble(
    optimize: Optimize,
    models: Sequence,
    data,
    folder: Path,
    *,
    mc_samples: int | None = None,
    temperature: bool = True,
    target=None,
    ood: np.ndarray | None = None,
    conformal=None,
    say: Callable[[str], None] = lambda m: None,
    keras3: bool = False,
    **options,
) -> EnsembleRun:
    """Optimize the members (:func:`optimize_members`, ``options`` as there; their optimized Keras models kept)
    into ``folder/members`` and write ``folder/ensemble.onnx``, calibrated, thresholded (``target``), given conformal
    outputs (``conformal``: a ConformalConfig) and evaluated (``ood``) by
    :func:`deploykit.uncertainty.bundle.ensemble_bundle`."""
    from deploykit.uncertainty.bundle import ensemble_bundle
    from deploykit.uncertainty.ensemble import ensemble_sizes

    if mc_samples is not None and mc_samples < 1:
        raise UsageError(f"mc_samples must be >= 1, got {mc_samples}")
    if len(models) < 2:
        raise UsageError(f"a deep ensemble needs at least 2 members, got {len(models)}")
    members, original = optimize_members(
        optimize,
        models,
        data,
        folder / MEMBERS_DIR,
        progress=say,
        mc_samples=mc_samples,
        keep_keras=True,
        keras3=keras3,
        **options,
    )
    say(f"writing {ENSEMBLE_FILE} ({len(members)} members)")
    bundle = ensemble_bundle(
        members,
        data,
        folder / ENSEMBLE_FILE,
        temperature=temperature,
        target=target,
        ood=ood,
        conformal=conformal,
        say=lambda m: say("  " + m),
    )
    return EnsembleRun(bundle, ensemble_sizes(members, bundle.export.path, original), members)


def load_member(file: str, data, unsafe: bool = False):
    """An ``[ensemble] members`` file, loaded and checked against the run's data (its inputs, and its outputs against
    the labels: softmax and logits members mix, the ensemble averages probabilities); a bad one is one error of its
    kind (ModelLoadError, DataError, UsageError) naming the file."""
    from deploykit.io.lengths import load_model_for

    try:
        model = load_model_for(file, data, unsafe=unsafe)  # a text model's length: the data's
        data.check_model(model)
    except (ModelLoadError, DataError, UsageError) as exc:
        kind = next(k for k in (ModelLoadError, DataError, UsageError) if isinstance(exc, k))
        raise kind(f"ensemble member {file}: {exc}") from None
    return model
