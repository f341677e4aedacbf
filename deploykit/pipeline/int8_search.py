"""The int8 fallback: when an int8 variant misses the accuracy budget, try others, keep the first that meets it.

The one place the pipeline decides which int8 settings are tried and in what order
(:func:`int8_variants`); each is exported by the exporter's own :func:`~deploykit.export.export_variant`
with its knobs (:class:`~deploykit.export.config.QuantConfig`), so a new exporter knob or variant
needs one more entry in the lists below and nothing else here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.errors import DeployKitError, UsageError
from deploykit.export.config import CalibrationMethod, ExportFormat, QuantConfig, Quantization, Recipe
from deploykit.export.int8_prep import STANDARDIZATION, STANDARDIZED_NOTE, standardized_knobs

#: More calibration samples than configured, for the second static try (capped by the training split).
MORE_CALIBRATION = 4


@dataclass(frozen=True)
class Int8Variant:
    """One int8 setting of one format: an exporter variant and its knobs."""

    format: ExportFormat
    quantization: Quantization
    knobs: QuantConfig
    note: str = ""  # what this try changes, for the report ("entropy calibration", "first and last layer in float")
    #: Not one try but the per-layer fallback over these layers (deploykit.export.int8_fallback): ranked one at a
    #: time in float, then returned to float most harmful first until within the budget.
    per_layer: tuple[str, ...] = ()
    #: A quantization-aware fine-tune before the conversion (deploykit.export.qat.QatTuning): the rung after
    #: post-training int8 of a TFLite int8-full variant.
    tuning: Any = None

    def describe(self) -> str:
        knobs = self.knobs.for_variant(self.quantization)
        calibration = (
            f", {knobs.num_calibration} {knobs.calibration_method.value} calibration samples"
            if self.quantization.needs_calibration
            else ""
        )
        if self.format is ExportFormat.ONNX and self.quantization.spec.recipe is Recipe.ONNX_STATIC:
            calibration += f", {knobs.activation_type.resolved().value} activations"
        if self.tuning is not None:  # the fake-quant ranges are trained; the samples calibrate only what has none
            calibration = f", ranges trained ({knobs.num_calibration} calibration samples for the rest)"
        return f"{self.format.value} {self.quantization.value}{calibration}" + (f", {self.note}" if self.note else "")

    @property
    def file(self) -> str:
        return self.quantization.file_name(self.format)


def int8_variants(
    fmt: ExportFormat,
    requested: Quantization,
    knobs: QuantConfig,
    layers: list[str],
    taken: set[Quantization],
    dense_first: bool = True,
    raw_scales: bool = False,
    convolutions: bool = False,
    ranked: list[str] | None = None,
    quantization_aware=None,
) -> list[Int8Variant]:
    """The settings tried for one requested int8 variant, in order: as configured first, then the fallbacks.

    On a graph with ``convolutions`` a variant with a :attr:`~deploykit.export.config.VariantSpec.with_convolutions`
    (``int8-dynamic``, whose convolutions stay float) is tried as that variant first (``int8-static``: QDQ
    convolutions), with all of its tries, unless that one is requested on its own; the requested one follows.

    Static (ONNX QDQ, TFLite full integer): four times the calibration samples, then entropy (ONNX)
    calibration. Then, when the first prunable layer is a Dense one (``dense_first``), the inputs standardized in
    float in front of it (see deploykit.export.int8_prep). Then the tries that leave whole layers in float: the
    first and last layers, then the per-layer fallback. The standardization comes before them because it costs
    the input's width in float numbers, a layer in float its whole kernel: on the book's Fashion network pruned to
    95 % the per-layer fallback's "dense in float" passed at 107 KB gzip, larger than the float16 file (84 KB),
    where the standardization passes at 38 KB. With ``raw_scales`` (input features on scales far apart: raw
    tabular data, see :func:`raw_scales`) that standardization comes second instead and every later try keeps
    it: without it int8 is worthless there, and on images it costs some size (a float layer, float input and
    output). Then the format's other int8 variants not requested on their own (``taken``): ONNX dynamic per
    channel, TFLite dynamic range (int8 weights, float activations: the most accurate). ``layers``: the model's prunable
    layer names, first to last; ``ranked``: the ones the per-layer fallback ranks (default: ``layers``, at most
    :data:`~deploykit.export.int8_fallback.MAX_RANKED`), tried after the end layers in float.

    ``quantization_aware`` (a :class:`~deploykit.export.qat.QatTuning`, or None: off): a TFLite full-integer variant
    is next fine-tuned quantization-aware with its sparsity kept, right after post-training int8 (its calibration
    tries) missed and before anything that costs size (the standardization, layers in float). Not with
    ``raw_scales``: there the float standardization is what int8 lacks, and every try after the first has it.
    """
    instead = requested.for_graph(convolutions)
    if instead is not requested and instead not in taken and fmt in instead.formats:
        first = int8_variants(fmt, instead, knobs, layers, taken | {requested}, dense_first, raw_scales, ranked=ranked)
        first[0] = dataclasses.replace(first[0], note=f"convolutions: {instead.value} rather than {requested.value}")
        return [*first, *int8_variants(fmt, requested, knobs, layers, taken | {instead}, dense_first, raw_scales)]
    tries = [Int8Variant(fmt, requested, knobs)]
    standardized = None
    if dense_first and not knobs.standardize_input:
        standardized = Int8Variant(fmt, requested, standardized_knobs(knobs, requested), STANDARDIZED_NOTE)
    standardizations = [] if standardized is None else [standardized, _exact(standardized)]
    if standardized is not None and raw_scales:
        tries += standardizations
        knobs = standardized.knobs  # every later try keeps it
    calibration, in_float = _calibration_tries(fmt, requested, knobs, layers, ranked)
    tries += calibration
    if quantization_aware is not None and requested.spec.recipe is Recipe.TFLITE_FULL and not raw_scales:
        from deploykit.export.qat import NOTE

        tries.append(Int8Variant(fmt, requested, knobs, NOTE, tuning=quantization_aware))
    if standardized is not None and not raw_scales:
        tries += standardizations
    tries += in_float
    others = [
        q
        for q in Quantization
        if fmt in q.formats
        and q.precision is requested.precision
        and q is not requested
        and q not in taken
        and not q.needs_calibration
    ]
    plain = dataclasses.replace(knobs, exclude=tuple(n for n in knobs.exclude if n != STANDARDIZATION))
    tries += [Int8Variant(fmt, q, plain, "fallback") for q in others]
    return tries


def _exact(standardized: Int8Variant) -> Int8Variant:
    """The standardization try with its constants as measured: the next try when the grid's rounding (a smaller
    file, :func:`deploykit.export.int8_prep.on_grid`) costs a validation row or two; which one passes is noise."""
    knobs = dataclasses.replace(standardized.knobs, standardize_exact=True)
    return dataclasses.replace(standardized, knobs=knobs, note=f"{standardized.note}, constants as measured")


def _calibration_tries(
    fmt: ExportFormat, requested: Quantization, knobs: QuantConfig, layers: list[str], ranked: list[str] | None = None
):
    """A static variant's further tries, as (calibration tries, tries leaving layers in float): more calibration
    samples, entropy (ONNX); then the end layers in float, then the per-layer fallback (when it has more than the
    end layers to choose from)."""
    if not requested.needs_calibration:
        return [], []
    more = dataclasses.replace(knobs, num_calibration=MORE_CALIBRATION * knobs.num_calibration)
    tries = [Int8Variant(fmt, requested, more, f"{MORE_CALIBRATION}x calibration")]
    if fmt is ExportFormat.ONNX and knobs.calibration_method is not CalibrationMethod.ENTROPY:
        tries.append(
            Int8Variant(
                fmt,
                requested,
                dataclasses.replace(more, calibration_method=CalibrationMethod.ENTROPY),
                f"{MORE_CALIBRATION}x calibration, entropy",
            )
        )
    in_float = []
    ends = tuple(dict.fromkeys([layers[0], layers[-1]])) if layers else ()
    # never every layer in float: a file of that variant's name with nothing quantized would not be int8
    if ends and not set(ends) <= set(knobs.exclude) and not set(layers) <= {*knobs.exclude, *ends}:
        kept = dataclasses.replace(more, exclude=tuple(dict.fromkeys([*knobs.exclude, *ends])))
        in_float.append(Int8Variant(fmt, requested, kept, f"{', '.join(ends)} kept in float"))
    from deploykit.export.int8_fallback import MAX_RANKED

    candidates = tuple(n for n in (layers[:MAX_RANKED] if ranked is None else ranked) if n not in knobs.exclude)
    if requested.spec.takes_exclude and len(candidates) > 2:
        in_float.append(Int8Variant(fmt, requested, more, "per-layer fallback", per_layer=candidates))
    return tries, in_float


#: Input features whose largest standard deviation is this many times their median are raw tabular data
#: (breast_cancer: 7,800; digits: 1.5; Fashion-MNIST pixels: 1.3).
RAW_SCALE_RATIO = 100.0


def raw_scales(feature_var) -> bool:
    """Whether input features (their training variances) sit on scales far apart: raw tabular data."""
    import numpy as np

    std = np.sqrt(np.asarray(feature_var, np.float64).ravel())
    std = std[std > 0]
    return bool(std.size) and float(std.max() / np.median(std)) > RAW_SCALE_RATIO


def export_int8(variant: Int8Variant, model, folder: Path, data, *, opset: int, metadata=None):
    """Export one int8 try through the exporter (a quantization-aware one through deploykit.export.qat); returns
    its ExportRecord."""
    from deploykit.export import export_variant

    if variant.tuning is not None:
        from deploykit.export.qat import export_quantization_aware

        return export_quantization_aware(
            model, folder / variant.file, data, tuning=variant.tuning, config=variant.knobs
        )

    return export_variant(
        model,
        variant.format,
        variant.quantization,
        folder / variant.file,
        data,
        config=variant.knobs,
        opset=opset,
        metadata=metadata,
    )


@dataclass
class Int8Attempt:
    """One setting tried: its measured row (the pipeline's ArtifactRow), or why it could not be made."""

    variant: Int8Variant
    row: Any | None  # None when the export itself failed
    error: str = ""
    where: str = ""  # where it was made, when not in this process ("ran on node ..., pid ...": a Ray task)

    @property
    def passed(self) -> bool:
        return self.row is not None and self.row.verdict.shipped


def search_int8(
    variants: list[Int8Variant],
    make: Callable[[Int8Variant], Any],
    measure: Callable[[Any], Any],
    allowed: Callable[[Int8Variant], bool] = lambda v: True,
) -> list[Int8Attempt]:
    """Export (``make``) and measure each setting in turn; stop at the first whose row passes.

    An exporter error is that try's failure (its message kept), not the run's; a bad option
    (UsageError) is the caller's mistake and propagates. Tries of one variant share its file name,
    so the caller removes the files of the variants not :func:`chosen`. ``allowed`` (a time budget) may stop the
    fallbacks before a setting: the first is always tried.
    """
    attempts: list[Int8Attempt] = []

    def run(variant: Int8Variant) -> Int8Attempt:
        try:
            record = make(variant)
        except UsageError:
            raise
        except DeployKitError as exc:
            return Int8Attempt(variant, None, str(exc))
        return Int8Attempt(variant, measure(record))

    for variant in variants:
        if attempts and not allowed(variant):
            break
        if variant.per_layer:
            attempts += per_layer_attempts(variant, run, lambda v=variant: allowed(v))
        else:
            attempts.append(run(variant))
        if attempts and attempts[-1].passed:
            break
    return attempts


def per_layer_attempts(
    variant: Int8Variant, run: Callable[[Int8Variant], Int8Attempt], allowed: Callable[[], bool]
) -> list[Int8Attempt]:
    """The per-layer fallback of ``variant`` (:func:`deploykit.export.int8_fallback.return_to_float`), each of its
    tries one attempt whose note names the layers it left in float. The layers are deploykit's own choice, not the
    user's ``--exclude``: one the exported graph has no node for (seen on MobileNetV2's depthwise convs) fails that
    try, with its reason, instead of the run."""
    from deploykit.export.int8_fallback import return_to_float

    made: list[Int8Attempt] = []

    def attempt(exclude: tuple[str, ...]) -> tuple[bool, float | None]:
        knobs = dataclasses.replace(variant.knobs, exclude=tuple(dict.fromkeys([*variant.knobs.exclude, *exclude])))
        tried = Int8Variant(
            variant.format, variant.quantization, knobs, f"per-layer fallback: {', '.join(exclude)} in float"
        )
        try:
            made.append(run(tried))
        except UsageError as exc:  # a layer the ranking named that the exported graph lacks: this try's failure
            made.append(Int8Attempt(tried, None, str(exc)))
        return made[-1].passed, goodness(made[-1])

    return_to_float(variant.per_layer, attempt, allowed=allowed)
    return made


def goodness(attempt: Int8Attempt) -> float | None:
    """An attempt's validation figure, higher is better (a regressor's RMSE negated); None when unmeasured."""
    row = attempt.row
    if row is None or (row.accuracy is None and row.rmse is None):
        return None
    return row.accuracy if row.accuracy is not None else -row.rmse


def chosen(attempts: list[Int8Attempt]) -> Int8Attempt:
    """The attempt shipped (the passing one), else the most accurate one measured (reported as rejected)."""
    passing = [a for a in attempts if a.passed]
    if passing:
        return passing[0]
    measured = [a for a in attempts if goodness(a) is not None]
    return max(measured, key=goodness) if measured else attempts[-1]
