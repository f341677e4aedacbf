"""What an optimize option is, declared once: :class:`Option` (its flat keyword, the TOML keys it sets, its CLI flag
and help), :class:`TableSpec` (a TOML table: its dataclass, its options, how they land in it) and :class:`StepSpec`
(a step of the run: its name, order, table and run function). The rows are in :mod:`deploykit.pipeline.registry`.

From one row: ``OptimizeConfig.with_options(name=...)`` and ``optimize(name=...)`` take the flat keyword, the TOML
file takes ``[table] key``, ``deploykit optimize`` takes the flag (``--name-with-dashes``; ``--no-name`` for a
switch that is on by default), with the row's help. Pure Python: the CLI reads it for ``--help``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class Cli(enum.Enum):
    """How an option's flag gives its flat value."""

    VALUE = "value"  # --name V: V (type, metavar, nargs, choices)
    OFF = "off"  # --no-name: False (the step or setting is on by default)
    ON = "on"  # --name: True
    NONE = "none"  # API and TOML only (a deprecated spelling)


@dataclass(frozen=True)
class Option:
    """One flat option of the optimize pipeline.

    ``keys``: the TOML keys it sets, ``table.field`` (a sub-table's ``table.sub.field``); the first is the one the
    default merge writes. ``example``: a value the TOML, the API and the CLI all accept, and ``toml`` its TOML
    tables when they are not ``{table: {field: example}}`` (the registry test reads both).
    ``off_value``: a VALUE option that also has ``--no-name``, giving this value (``--no-sparsity``: "none").
    ``group``: flags in one mutually exclusive group. ``path``: a file path, made absolute on the command line
    (the run's deploykit.toml repeats from anywhere).
    """

    name: str
    keys: tuple[str, ...]
    help: str = ""
    cli: Cli = Cli.VALUE
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    nargs: str | None = None
    const: Any = None
    choices: tuple[str, ...] | None = None
    off_value: Any = None
    off_help: str = ""
    group: str | None = None
    path: bool = False
    shared: bool = False  # the flag is declared by a group shared with other commands (deploykit.cli.export, cli.mc)
    example: Any = None
    toml: Mapping[str, Any] | None = None
    argv: tuple[str, ...] | None = None  # the CLI flags that give ``example`` (default: derived from it)
    needs: Mapping[str, Any] = field(default_factory=dict)  # other flat options the example needs beside it
    check: Callable[[str, Any], Any] | None = None  # validates the flat value, naming the option

    @property
    def flag(self) -> str:
        """The CLI flag: ``--name-with-dashes``; ``--no-name`` for a switch on by default."""
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.cli is Cli.OFF else f"--{dashed}"

    @property
    def table(self) -> str:
        """The TOML table of its first key."""
        return self.keys[0].split(".")[0]

    def example_toml(self) -> dict[str, Any]:
        """The TOML tables that say what ``example`` says as a flat option."""
        if self.toml is not None:
            return dict(self.toml)
        tables: dict[str, Any] = {}
        for key in self.keys:
            *parents, last = key.split(".")
            node = tables
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = self.example
        return tables

    def add_to(self, parser, groups: dict[str, Any], default: Any = None) -> None:
        """Add this option's flag (and ``--no-name`` of an ``off_value``) to an argparse parser; ``{default}`` in the
        help is the table's default (:meth:`TableSpec.default_of`), so it is written once, in the dataclass."""
        if self.shared or self.cli is Cli.NONE:
            return
        text = self.help.replace("{default}", shown(default))
        where = parser
        if self.group is not None:
            if self.group not in groups:
                groups[self.group] = parser.add_mutually_exclusive_group()
            where = groups[self.group]
        if self.cli is Cli.VALUE:
            given = {"type": self.type, "metavar": self.metavar, "nargs": self.nargs, "const": self.const}
            given |= {"choices": list(self.choices)} if self.choices else {}
            where.add_argument(
                self.flag, dest=self.name, default=None, help=text, **{k: v for k, v in given.items() if v}
            )
            if self.off_value is not None:
                where.add_argument(f"--no-{self.name.replace('_', '-')}", action="store_true", help=self.off_help)
        else:
            where.add_argument(self.flag, action="store_true", help=text)

    def example_argv(self) -> list[str]:
        """The command-line flags that say what ``example`` says (empty: no CLI flag)."""
        if self.argv is not None or self.cli is Cli.NONE:
            return list(self.argv or ())
        if self.cli is not Cli.VALUE:
            return [self.flag]
        values = self.example if isinstance(self.example, (list, tuple)) else [self.example]
        return [self.flag, *map(str, values)]

    def read(self, args) -> Any:
        """The flat value the parsed flags give (None: not given)."""
        if self.cli is Cli.OFF:
            return False if getattr(args, self.flag[2:].replace("-", "_")) else None
        if self.cli is Cli.ON:
            return True if getattr(args, self.name) else None
        value = getattr(args, self.name, None)
        if self.off_value is not None and getattr(args, f"no_{self.name}", False):
            return self.off_value
        if self.path and value is not None:
            return [_absolute(v) for v in value] if isinstance(value, list) else _absolute(value)
        return value


def shown(value: Any) -> str:
    """A default as the help says it: ``0.01``, ``30``, ``prune``."""
    if isinstance(value, enum.Enum):
        return str(value.value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _absolute(path: str) -> str:
    from pathlib import Path

    return str(Path(path).resolve())


#: ``merge(table, fields, flat) -> table``: the flat options given for a table (``fields``: by the field of their
#: first key; ``flat``: every option given, by name) applied to it.
Merge = Callable[[Any, dict[str, Any], dict[str, Any]], Any]


def replace_fields(table, fields: dict[str, Any], flat: dict[str, Any]):
    """The default merge: each given option replaces its field."""
    return dataclasses.replace(table, **fields) if fields else table


@dataclass(frozen=True)
class TableSpec:
    """One TOML table of the pipeline file: its dataclass, the flat options that set it, how they land in it.

    ``legacy``: an earlier name of the table, still read with a FutureWarning.
    """

    name: str
    cls: type
    options: tuple[Option, ...] = ()
    merge: Merge = replace_fields
    legacy: str | None = None

    def default_of(self, option: Option) -> Any:
        """The value an option's first key has in this table's default (``sparsity.prune.epochs``: 30).

        Read off the dataclass's field defaults, not an instance: building the table would run its checks, and
        they may import what ``deploykit --help`` and ``deploykit serve`` must not (the conformal table's
        method names live in :mod:`deploykit.uncertainty`)."""
        first, *rest = option.keys[0].split(".")[1:]
        value = _field_default(self.cls, first)
        for part in rest:
            value = getattr(value, part, None)
        return value


def _field_default(cls: type, name: str) -> Any:
    """A dataclass field's default (its factory's value), or None when the class has no such field."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            return f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    return None


@dataclass(frozen=True)
class StepSpec:
    """One step of the run, in the order of :data:`~deploykit.pipeline.registry.STEPS`.

    ``run``: ``"module:function"`` taking ``(model, ctx)`` and returning a StepOutput, imported when the run
    starts (the registry stays light for the CLI, and below the modules it names). ``expand``: ``"module:function"``
    of ``(config, plan)`` giving the (name, run) pairs the step runs as (the export runs one per variant).
    ``when``: whether the step is in the run at all (a switched-off step that is always listed says why itself).
    ``engine``: the run function is given
    ``optimize`` first (the ensemble step runs the engine once per member).
    """

    name: str
    run: str
    table: str | None = None
    when: Callable[[Any], bool] | None = None
    expand: str | None = None
    engine: bool = False
    report: str | None = field(default=None)  # "module:function" adding the step's section to report.json

    def function(self) -> Callable:
        """The run function (imported now)."""
        return _resolve(self.run)

    def add_report(self, report: dict[str, Any], records) -> dict[str, Any]:
        """report.json with this step's own section (``report``: a function of the report and the run's step
        records); unchanged when the step has none."""
        return report if self.report is None else _resolve(self.report)(report, records)

    def steps(self, config, plan, engine: Callable | None = None) -> list[tuple[str, Callable]]:
        """The (name, run) pairs this step runs as in a run of ``config`` (none when ``when`` leaves it out)."""
        if self.when is not None and not self.when(config):
            return []
        if self.expand is not None:
            return list(_resolve(self.expand)(config, plan))
        run = self.function()
        if self.engine:
            import functools

            run = functools.partial(run, engine)
        return [(self.name, run)]


def _resolve(target: str) -> Callable:
    """``"module:function"``, imported now."""
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
