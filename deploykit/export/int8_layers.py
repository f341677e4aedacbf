"""``deploykit export``'s per-layer int8 fallback: an int8 artifact that misses its tolerance gets its most harmful
layers returned to float (:mod:`deploykit.export.int8_fallback`), decided on the validation split.

``optimize`` runs the same fallback inside its int8 search (``deploykit.pipeline.int8_search``); this is the
bundle's side of it, for an export from a Keras model with real data (the layers are named as Keras names them,
which ``QuantConfig.exclude`` understands in both runtimes). The artifact kept is then validated on the test split
by the bundle as any other; the layers left in float are said and written in ``validation.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from deploykit.errors import DeployKitError, UsageError
from deploykit.export.config import ExportConfig, Precision, Tolerance
from deploykit.export.int8_fallback import FallbackReport, rank_candidates, return_to_float


def layer_candidates(model) -> list[str]:
    """The layers ranked by the fallback: the model's Dense layers and convolutions (those int8 quantizes), at most
    :data:`~deploykit.export.int8_fallback.MAX_RANKED` of them (see :func:`rank_candidates`)."""
    from deploykit.graph import graph_from_model

    nodes = [n for n in graph_from_model(model, unsafe=True).nodes if n.spec.support.prunable]
    return rank_candidates({n.name: model.get_layer(n.name).get_weights()[0] for n in nodes})


def recover_int8(
    source, fmt, quant, path, data, config: ExportConfig, meta, reference: Callable, tolerance: Tolerance, say
) -> tuple[object, FallbackReport] | None:
    """(the record of the artifact now at ``path``, the fallback's report) after returning layers to float until the
    artifact meets ``tolerance`` on the validation split; None when it does not apply (a float variant, an ONNX
    file, no validation rows, fewer than 2 layers to choose from). Each try overwrites ``path``."""
    from deploykit.export.validate import validate

    keras = getattr(source, "keras", None)
    if keras is None or quant.precision is not Precision.INT8 or not quant.spec.takes_exclude or not len(data.x_val):
        return None
    knobs = config.quantization
    layers = [n for n in layer_candidates(keras) if n not in knobs.exclude]
    if len(layers) < 2:
        return None
    view = dataclasses.replace(data, x_test=data.x_val, y_test=data.y_val)
    made: list = []

    def attempt(exclude: tuple[str, ...]) -> tuple[bool, float | None]:
        kept = dataclasses.replace(knobs, exclude=tuple(dict.fromkeys([*knobs.exclude, *exclude])))
        try:
            record = source.export(fmt, quant, path, data, dataclasses.replace(config, quantization=kept), meta)
        except UsageError:
            raise
        except DeployKitError:
            return False, None
        made.append(record)
        report = validate(record, view, reference, tolerance=tolerance, repeats=1, check=False)
        return report.passed, report.accuracy if report.rmse is None else -report.rmse

    say(f"{path.name} missed its tolerance: ranking {len(layers)} layers by their effect in float (validation split)")
    fallback = return_to_float(layers, attempt)
    say(f"{path.name}: per-layer fallback, {fallback.describe()}")
    return (made[-1] if made else None), fallback
