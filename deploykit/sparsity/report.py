"""Records of the sparsity steps, and the measurements they are built from."""

from __future__ import annotations

import gzip
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploykit.core.evaluate import Metric, score
from deploykit.core.task import Task
from deploykit.records import Record
from deploykit.sparsity.tuning import TuneResult, rebuild


@dataclass
class LayerSparsity(Record):
    """One prunable layer's kernel (the one TF-MOT prunes: a SeparableConv2D's pointwise kernel) after the step."""

    name: str
    weights: int  # kernel weights (biases are never zeroed)
    zeros: int
    sparsity: float
    changed: bool = False  # the step sparsified this layer (False: skipped)
    target: float | None = None  # prune's target for this layer
    neurons_removed: int = 0  # by compact (when the step ran it)


@dataclass
class PruneSchedule(Record):
    """The TF-MOT PolynomialDecay schedule derived from the data size, batch size and epochs."""

    steps_per_epoch: int
    total_steps: int
    begin_step: int
    end_step: int
    frequency: int

    @classmethod
    def derive(cls, samples: int, batch_size: int, epochs: int, end_fraction: float) -> PruneSchedule:
        """Mask updates every quarter epoch; the last one lands exactly on ``end_step``.

        PolynomialDecay reaches its final sparsity only on an update step, so
        ``end_step`` is a multiple of the frequency within the run.
        """
        spe = -(-samples // batch_size)
        total = spe * epochs
        freq = max(1, spe // 4)
        end = freq * -(-round(end_fraction * total) // freq)
        if end > total:
            end = freq * (total // freq)
        return cls(spe, total, 0, max(end, freq), freq)


@dataclass
class LayerCompact(Record):
    """One Dense or conv layer before and after compact (neurons: units or output channels)."""

    name: str
    neurons_before: int
    neurons_after: int
    macs_before: int
    macs_after: int
    constant_kept: int = 0  # constant-output neurons kept: a Dropout, AlphaDropout or a non-element-wise layer follows


@dataclass
class CompactReport(Record):
    """What compact removed; MACs are the Dense and conv multiply-adds per example."""

    layers: list[LayerCompact]
    macs_before: int
    macs_after: int
    passes: int
    max_abs_diff: float | None = None  # on the check data, when given
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it was left alone (coupled channels...)

    @property
    def neurons_removed(self) -> int:
        return sum(l.neurons_before - l.neurons_after for l in self.layers)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def summary(self) -> str:
        rows = [f"{'layer':<24}{'neurons':>16}{'MACs':>22}{'kept const':>12}"]
        for l in self.layers:
            rows.append(
                f"{l.name:<24}{f'{l.neurons_before} -> {l.neurons_after}':>16}"
                f"{f'{l.macs_before} -> {l.macs_after}':>22}{l.constant_kept:>12}"
            )
        rows += [f"{name} skipped: {reason}" for name, reason in self.skipped.items()]
        diff = "" if self.max_abs_diff is None else f"; max |output difference| {self.max_abs_diff:.2e}"
        rows.append(
            f"removed {self.neurons_removed} neurons in {self.passes} passes; "
            f"MACs {self.macs_before} -> {self.macs_after} ({self.macs_ratio:.1%}){diff}"
        )
        return "\n".join(rows)


@dataclass
class SparsityReport(Record):
    """What prune or sparsify_l1 did: per-layer sparsity, accuracy and file sizes before and after.

    ``sparsity`` counts zeros over every Dense kernel (skipped layers
    included), measured before any compaction; accuracies are on the test
    split; sizes are of the saved ``.keras`` file (weights only) and its gzip.
    """

    method: str  # "prune" | "l1"
    layers: list[LayerSparsity]
    sparsity: float
    accuracy_before: float | None  # classifiers (None for a regressor)
    accuracy_after: float | None
    file_bytes_before: int
    file_bytes_after: int
    gzip_bytes_before: int
    gzip_bytes_after: int
    epochs_run: int
    best_epoch: int | None  # 1-based; the epoch whose weights were kept
    target_sparsity: float | None = None
    accuracy_before_zeroing: float | None = None  # l1: after fine-tuning, before the threshold
    schedule: PruneSchedule | None = None
    compact: CompactReport | None = None
    config: dict = field(default_factory=dict)
    rmse_before: float | None = None  # regressors: test RMSE against the targets
    rmse_after: float | None = None
    held_rows: int = 0  # training rows the best epoch was chosen on (tune_holdout); 0: the validation rows

    def after(self, metric) -> float:
        """The test figure after the step for an :class:`~deploykit.core.evaluate.Metric` (accuracy or RMSE)."""
        return getattr(self, f"{metric.value}_after")

    @property
    def gzip_ratio(self) -> float:
        """gzip size after / before (below 1/3 is the chapter's 3x)."""
        return self.gzip_bytes_after / self.gzip_bytes_before

    def summary(self) -> str:
        rows = [f"{'layer':<24}{'weights':>9}{'zeros':>9}{'sparsity':>10}{'target':>8}{'removed':>9}"]
        for l in self.layers:
            target = f"{l.target:.2f}" if l.target is not None else ("l1" if l.changed else "-")
            rows.append(f"{l.name:<24}{l.weights:>9}{l.zeros:>9}{l.sparsity:>10.3f}{target:>8}{l.neurons_removed:>9}")
        zeroing = (
            "" if self.accuracy_before_zeroing is None else f" (before zeroing {self.accuracy_before_zeroing:.4f})"
        )
        figure = (
            f"test accuracy {self.accuracy_before:.4f} -> {self.accuracy_after:.4f}{zeroing}"
            if self.accuracy_before is not None
            else f"test RMSE {self.rmse_before:.4g} -> {self.rmse_after:.4g}"
        )
        rows += [
            f"model sparsity {self.sparsity:.3f}; {figure}",
            f"file {self.file_bytes_before} -> {self.file_bytes_after} bytes; "
            f"gzip {self.gzip_bytes_before} -> {self.gzip_bytes_after} bytes ({self.gzip_ratio:.1%})",
        ]
        if self.compact is not None:
            rows.append("compact: " + self.compact.summary().splitlines()[-1])
        return "\n".join(rows)


def dense_layers(model) -> list:
    """The model's prunable layers (Dense and convolutions, the layer table's), in order."""
    from deploykit.core.layers import support_for

    return [l for l in model.layers if type(l).__name__ != "InputLayer" and support_for(l, unsafe=True).prunable]


def pruned_kernel(layer) -> np.ndarray:
    """The weights TF-MOT prunes in ``layer`` (a layer object, or a wrapper's inner layer): the table says which."""
    from deploykit.core.layers import support_for

    return np.asarray(layer.get_weights()[support_for(layer, unsafe=True).pruned_kernel[1]])


def kernel_sparsity(model, targets: dict[str, float | None]) -> list[LayerSparsity]:
    """Kernel zeros of every prunable layer; ``targets`` maps the sparsified layers to their target (or None)."""
    out = []
    for layer in dense_layers(model):
        kernel = pruned_kernel(layer)
        zeros = int(np.count_nonzero(kernel == 0))
        out.append(
            LayerSparsity(
                layer.name, int(kernel.size), zeros, zeros / kernel.size, layer.name in targets, targets.get(layer.name)
            )
        )
    return out


def model_sparsity(layers: list[LayerSparsity]) -> float:
    return sum(l.zeros for l in layers) / max(1, sum(l.weights for l in layers))


def saved_sizes(model) -> tuple[int, int]:
    """(bytes, gzip bytes) of the model saved with deploykit.io.models.save_model, weights only."""
    from deploykit.io.models import save_model

    with tempfile.TemporaryDirectory(prefix="deploykit-size-") as tmp:
        path = save_model(rebuild(model), Path(tmp) / "model.keras")  # a fresh copy: no optimizer state
        raw = path.read_bytes()
    return len(raw), len(gzip.compress(raw, compresslevel=9, mtime=0))


def sparsity_report(method: str, model, result, layers, data, tuned: TuneResult, compacted, config, **extra):
    """The SparsityReport of a fine-tuning step: ``model`` before, ``result`` after."""
    before, after = saved_sizes(model), saved_sizes(result)
    regression = data.task is Task.REGRESSION
    figures = {
        f"{Metric.of(data.task).value}_{when}": score(m, data.x_test, data.y_test, data.task)
        for when, m in (("before", model), ("after", result))
    }
    return SparsityReport(
        method=method,
        layers=layers,
        sparsity=model_sparsity(layers),
        accuracy_before=None if regression else figures["accuracy_before"],
        accuracy_after=None if regression else figures["accuracy_after"],
        rmse_before=figures.get("rmse_before"),
        rmse_after=figures.get("rmse_after"),
        file_bytes_before=before[0],
        file_bytes_after=after[0],
        gzip_bytes_before=before[1],
        gzip_bytes_after=after[1],
        epochs_run=tuned.epochs_run,
        best_epoch=tuned.best_epoch,
        held_rows=tuned.held_rows,
        compact=compacted,
        config=config.to_dict(),
        **extra,
    )
