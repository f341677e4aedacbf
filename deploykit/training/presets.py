"""Training configuration: the chapter's two recommended presets as one typed, validated config.

* ``default`` (Table 11-3): He initialization, ELU, BatchNormalization when the
  net is deep (see :data:`BN_MIN_DEPTH`), early stopping with the best weights
  restored, optional l2, Nadam or SGD with Nesterov momentum 0.9, 1cycle.
* ``selu`` (Table 11-4): LeCun normal initialization, SELU, no
  BatchNormalization (the net normalizes itself), AlphaDropout when dropout is
  asked for, standardized inputs, 1cycle.

Both standardize the inputs inside the model (a Normalization layer), so the
trained model takes raw inputs. This module is pure Python (no TensorFlow):
the CLI and the TOML pipeline read it cheaply.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Literal

from deploykit.configs import SEED_MAX, Config, choice, fraction, integer, number, positive
from deploykit.errors import ConfigError

#: ``batchnorm="auto"`` adds BatchNormalization when the net has at least this many hidden layers
#: (Table 11-3: "batch norm if deep"; shallower nets train as well without its cost).
BN_MIN_DEPTH = 3

#: SGD uses Nesterov momentum 0.9 (1cycle then cycles it 0.95 -> 0.85 -> 0.95).
SGD_MOMENTUM = 0.9

AUTO = "auto"
ALL = "all"


class Preset(enum.Enum):
    DEFAULT = "default"  # Table 11-3
    SELU = "selu"  # Table 11-4 (self-normalizing net)


class Optimizer(enum.Enum):
    NADAM = "nadam"
    SGD = "sgd"  # with Nesterov momentum


class BatchNorm(enum.Enum):
    AUTO = "auto"  # on when len(hidden) >= BN_MIN_DEPTH (never with the selu preset)
    ON = "on"
    OFF = "off"


@dataclass(frozen=True)
class PresetSpec:
    """What a preset puts in each hidden layer."""

    kernel_initializer: str
    activation: str
    dropout_class: str  # Keras class name of its dropout layer
    allows_batchnorm: bool


PRESETS: dict[Preset, PresetSpec] = {
    Preset.DEFAULT: PresetSpec("he_normal", "elu", "Dropout", allows_batchnorm=True),
    Preset.SELU: PresetSpec("lecun_normal", "selu", "AlphaDropout", allows_batchnorm=False),
}


@dataclass(frozen=True)
class TrainConfig(Config):
    """How to train one dense classifier. Validated on construction; round-trips through ``to_dict``/``from_dict``.

    ``dropout_layers`` is ``"all"`` (every hidden layer) or ``k`` (the top
    ``k`` hidden layers, all of them when the net has fewer; ``"top2"`` is
    accepted too). ``learning_rate`` is the 1cycle maximum rate, or ``"auto"``
    to pick it with the learning-rate finder.
    """

    preset: Preset = Preset.DEFAULT
    hidden: tuple[int, ...] = (64, 64, 64)
    dropout: float = 0.2
    dropout_layers: int | Literal["all"] = 2
    batchnorm: BatchNorm = BatchNorm.AUTO
    optimizer: Optimizer = Optimizer.NADAM
    learning_rate: float | Literal["auto"] = AUTO
    epochs: int = 40
    batch_size: int = 32
    l2: float = 0.0
    patience: int = 10  # early stopping on val_loss, best weights restored
    seed: int = 42

    def __post_init__(self) -> None:
        _set = object.__setattr__
        _set(self, "preset", choice(Preset, "preset", self.preset))
        _set(self, "optimizer", choice(Optimizer, "optimizer", self.optimizer))
        _set(self, "batchnorm", choice(BatchNorm, "batchnorm", self.batchnorm))
        _set(self, "hidden", _hidden(self.hidden))
        _set(self, "dropout_layers", _dropout_layers(self.dropout_layers))
        if isinstance(self.learning_rate, str):
            if self.learning_rate != AUTO:
                raise ConfigError(f"learning_rate must be a positive number or 'auto', got {self.learning_rate!r}")
        else:
            _set(self, "learning_rate", positive("learning_rate", self.learning_rate))
        _set(self, "dropout", fraction("dropout", self.dropout))
        _set(self, "l2", number("l2", self.l2, 0.0))
        for name in ("epochs", "batch_size", "patience"):
            integer(name, getattr(self, name), 1)
        integer("seed", self.seed, 0, SEED_MAX)
        if self.batchnorm is BatchNorm.ON and not self.spec.allows_batchnorm:
            raise ConfigError(
                f"batchnorm: the {self.preset.value} preset uses no BatchNormalization (SELU normalizes itself); "
                "use batchnorm='auto' or 'off'"
            )

    @property
    def spec(self) -> PresetSpec:
        return PRESETS[self.preset]

    @property
    def use_batchnorm(self) -> bool:
        """The explicit rule: forced on/off, else on for nets with >= BN_MIN_DEPTH hidden layers (default preset
        only)."""
        if self.batchnorm is BatchNorm.AUTO:
            return self.spec.allows_batchnorm and len(self.hidden) >= BN_MIN_DEPTH
        return self.batchnorm is BatchNorm.ON

    def dropout_after(self, index: int) -> bool:
        """Whether hidden layer ``index`` (0-based, bottom first) is followed by dropout."""
        if self.dropout == 0.0:
            return False
        if self.dropout_layers == ALL:
            return True
        return index >= len(self.hidden) - int(self.dropout_layers)

    @property
    def auto_lr(self) -> bool:
        return self.learning_rate == AUTO


def _hidden(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            raise ConfigError(f"hidden must be layer widths like 64,64,64, got {value!r}")
        value = [int(p) for p in parts]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in value
    ):
        raise ConfigError(f"hidden must be a list of positive layer widths, got {value!r}")
    return tuple(value)


def _dropout_layers(value: Any) -> int | str:
    if isinstance(value, str):
        m = re.fullmatch(r"top(\d+)", value.strip().lower())
        if value.strip().lower() == ALL:
            return ALL
        if m:
            value = int(m.group(1))
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(
        f"dropout_layers must be 'all' or a number of top hidden layers (e.g. 2 or 'top2'), got {value!r}"
    )
