"""What a BatchNorm fold did: the :class:`FoldReport` record and its table."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from deploykit.records import Record


class Placement(enum.Enum):
    BACKWARD = "backward"  # into the Dense before it (the Dense is linear)
    FORWARD = "forward"  # into the next Dense (through Dropout, Flatten, Reshape)


@dataclass
class FoldedLayer(Record):
    """One BatchNormalization / Normalization folded away."""

    name: str
    kind: str
    placement: Placement
    target: str  # the Dense it went into
    through: list[str]  # Dropout / Flatten / Reshape layers the forward fold passed
    params: int  # values the layer held (gone with it)
    target_params_before: int
    target_params_after: int  # grows by the bias when the Dense had use_bias=False
    max_scale: float  # largest factor a kernel entry was multiplied by (large: harder to quantize)


@dataclass
class UnfoldedLayer(Record):
    """A foldable layer that stays, and why."""

    name: str
    kind: str
    reason: str


@dataclass
class FoldReport(Record):
    """The record of :func:`deploykit.fold_batchnorm`.

    ``max_abs_diff`` is the largest absolute difference between the original
    and folded model outputs (inference mode) on ``probe_samples`` inputs
    described by ``probe``.
    """

    folded: list[FoldedLayer]
    unfolded: list[UnfoldedLayer]
    params_before: int
    params_after: int
    max_abs_diff: float
    probe_samples: int
    probe: str
    changed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.changed = bool(self.folded)

    def table(self) -> str:
        """A short human-readable table of the fold."""
        if not self.changed:
            head = "nothing folded: the model comes back unchanged"
        else:
            head = (
                f"folded {len(self.folded)} layer(s); parameters {self.params_before:,} -> "
                f"{self.params_after:,} ({self.params_after - self.params_before:+,})"
            )
        lines = [head, f"max |output difference| {self.max_abs_diff:.3g} on {self.probe_samples} {self.probe}"]
        if self.folded:
            rows = [("layer", "kind", "placement", "into", "params", "max scale", "target params")]
            rows += [
                (
                    f.name,
                    f.kind,
                    f.placement.value,
                    f.target,
                    f"{f.params:,}",
                    f"{f.max_scale:.3g}",
                    f"{f.target_params_before:,} -> {f.target_params_after:,}",
                )
                for f in self.folded
            ]
            lines += _columns(rows)
        if self.unfolded:
            lines.append("not folded:")
            lines += _columns([(u.name, u.kind, u.reason) for u in self.unfolded])
        return "\n".join(lines)


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
