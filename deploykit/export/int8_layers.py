"""``deploykit export``'s int8 recovery: an int8 artifact that misses its tolerance gets its inputs standardized in
float (raw tabular features), then its most harmful layers returned to float (:mod:`deploykit.export.int8_fallback`),
decided on the validation split.

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
from deploykit.export.config import ExportConfig, Precision, QuantConfig, Tolerance
from deploykit.export.int8_fallback import (
    MAX_TRIES,
    FallbackReport,
    layer_kernels,
    rank_candidates,
    return_to_float,
)
from deploykit.export.int8_prep import dense_first, standardized_knobs


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
        from deploykit.export.onnx_quant import pre_process

        with tempfile.TemporaryDirectory(prefix="deploykit-fallback-") as tmp, quiet_native():
            pre_process(path, Path(tmp) / "pre.onnx")
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
    """(the record of the artifact now at ``path``, the fallback's report) after recovering an int8 artifact that
    missed ``tolerance``, decided on the validation split; None when nothing applies (a float variant, no validation
    rows). Each try overwrites ``path``.

    First, where the first kernel layer is a Dense one and the inputs are not standardized yet, the float input
    standardization (:func:`~deploykit.export.int8_prep.standardized_knobs`): raw tabular features spoil int8 as a
    whole, which no choice of layers in float repairs. Then the per-layer fallback (from the standardized setting when
    that scored higher), where the variant takes ``exclude`` and there are 2 layers or more to choose from.
    """
    from deploykit.export.validate import validate

    if quant.precision is not Precision.INT8 or not len(data.x_val):
        return None
    keras, onnx_file = getattr(source, "keras", None), getattr(source, "path", None)
    if keras is None and onnx_file is None:
        return None
    knobs = config.quantization
    view = dataclasses.replace(data, x_test=data.x_val, y_test=data.y_val)
    made: list = []

    def attempt_with(used: QuantConfig):
        def attempt(exclude: tuple[str, ...]) -> tuple[bool, float | None]:
            kept = dataclasses.replace(used, exclude=tuple(dict.fromkeys([*used.exclude, *exclude])))
            try:
                record = source.export(fmt, quant, path, data, dataclasses.replace(config, quantization=kept), meta)
            except UsageError:
                raise
            except DeployKitError:
                return False, None
            made.append(record)
            report = validate(record, view, reference, tolerance=tolerance, repeats=1, check=False)
            return report.passed, report.accuracy if report.rmse is None else -report.rmse

        return attempt

    report = FallbackReport()
    if not knobs.standardize_input and _dense_first(keras, onnx_file):
        say(f"{path.name} missed its tolerance: trying its inputs standardized in float (validation split)")
        standardized = standardized_knobs(knobs, quant)
        passed, figure = attempt_with(standardized)(())
        report.tries, report.standardized = 1, True
        if passed:
            report.passed = True
            say(f"{path.name}: {report.describe()}")
            return made[-1], report
        plain_passed, plain = attempt_with(knobs)(())  # which setting the layers are ranked from
        report.tries += 1
        if plain_passed or _higher(plain, figure):  # the miss was not the inputs' scales: rank from the plain one
            report.standardized = False
        else:
            knobs = standardized
    found = layer_candidates(keras) if keras is not None else onnx_candidates(onnx_file, quant)
    layers = [n for n in found if n not in knobs.exclude]
    if not quant.spec.takes_exclude or len(layers) < 2:
        return (made[-1], report) if made else None
    say(f"{path.name} missed its tolerance: ranking {len(layers)} layers by their effect in float (validation split)")
    fallback = return_to_float(layers, attempt_with(knobs), max_tries=MAX_TRIES - report.tries)
    fallback.tries += report.tries
    fallback.standardized = report.standardized
    say(f"{path.name}: per-layer fallback, {fallback.describe()}")
    return (made[-1] if made else None), fallback


def _higher(a: float | None, b: float | None) -> bool:
    """Whether validation figure ``a`` beats ``b`` (a failed try, None, beats nothing)."""
    return a is not None and (b is None or a > b)


def _dense_first(keras, onnx_file) -> bool:
    """Whether the model's first kernel layer is a Dense one (a Gemm / MatMul of an ONNX file)."""
    if keras is not None:
        return dense_first(keras)
    from deploykit.export.onnx_int8_prep import first_kernel_is_dense

    return first_kernel_is_dense(onnx_file)
