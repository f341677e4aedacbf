"""``deploykit export``'s per-layer int8 fallback: an int8 artifact that misses its tolerance gets its most harmful
layers returned to float (:mod:`deploykit.export.int8_fallback`), decided on the validation split.

``optimize`` runs the same fallback inside its int8 search (``deploykit.pipeline.int8_search``); this is the
bundle's side of it, for an export with real data: from a Keras model (the layers named as Keras names them, which
``QuantConfig.exclude`` understands in both runtimes), or from a float32 ONNX file (its Conv / Gemm / MatMul nodes
with a constant weight, named as the graph the quantizer resolves ``exclude`` on names them: the
``quant_pre_process``-ed graph for ``int8-static``, the file's own for ``int8-dynamic``). The artifact kept is then
validated on the test split by the bundle as any other; the layers left in float are said and written in
``validation.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from deploykit.errors import DeployKitError, UsageError
from deploykit.export.config import ExportConfig, Precision, Tolerance
from deploykit.export.int8_fallback import FallbackReport, layer_kernels, rank_candidates, return_to_float


def layer_candidates(model) -> list[str]:
    """The layers ranked by the fallback: the model's Dense layers and convolutions (those int8 quantizes), at most
    :data:`~deploykit.export.int8_fallback.MAX_RANKED` of them (see :func:`rank_candidates`)."""
    from deploykit.core.graph import graph_from_model

    nodes = [n for n in graph_from_model(model, unsafe=True).nodes if n.spec.support.prunable]
    return rank_candidates(layer_kernels(model, [n.name for n in nodes]))


def onnx_candidates(path, quant) -> list[str]:
    """The weighted nodes of a float32 ONNX file the fallback ranks (at most MAX_RANKED, see :func:`rank_candidates`),
    named as the quantizer of ``quant`` sees them."""
    import tempfile
    from pathlib import Path

    import onnx
    from onnx import numpy_helper

    from deploykit.export.config import Recipe
    from deploykit.log import quiet_native

    proto = onnx.load(str(path))
    if quant.spec.recipe is Recipe.ONNX_STATIC:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with tempfile.TemporaryDirectory(prefix="deploykit-fallback-") as tmp, quiet_native():
            quant_pre_process(str(path), str(Path(tmp) / "pre.onnx"))
            proto = onnx.load(str(Path(tmp) / "pre.onnx"))
    weights = {t.name: t for t in proto.graph.initializer}
    kernels = {}
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in weights:
            w = numpy_helper.to_array(weights[node.input[1]])
            kernels[node.name] = np.moveaxis(w, 0, -1) if node.op_type == "Conv" else w  # output channels last
    return rank_candidates({k: v for k, v in kernels.items() if k})


def recover_int8(
    source, fmt, quant, path, data, config: ExportConfig, meta, reference: Callable, tolerance: Tolerance, say
) -> tuple[object, FallbackReport] | None:
    """(the record of the artifact now at ``path``, the fallback's report) after returning layers to float until the
    artifact meets ``tolerance`` on the validation split; None when it does not apply (a float variant, an ONNX
    file, no validation rows, fewer than 2 layers to choose from). Each try overwrites ``path``."""
    from deploykit.export.validate import validate

    if quant.precision is not Precision.INT8 or not quant.spec.takes_exclude or not len(data.x_val):
        return None
    keras, onnx_file = getattr(source, "keras", None), getattr(source, "path", None)
    if keras is None and onnx_file is None:
        return None
    knobs = config.quantization
    found = layer_candidates(keras) if keras is not None else onnx_candidates(onnx_file, quant)
    layers = [n for n in found if n not in knobs.exclude]
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
