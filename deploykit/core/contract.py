"""The tensor and metadata contract of deploykit's ONNX models: the names, types and shapes export, uncertainty and
serve share.

Pure Python on purpose (no numpy, onnx or TensorFlow): ``deploykit serve``
imports it without pulling in the exporters, and the exporters import it to
write what the server reads. A name changed here changes on both sides.

:data:`OUTPUTS` is the one table of served outputs: each row's name, dtype, symbolic shape, the model kinds
(``deploykit.kind`` in ``metadata_props``: deterministic / mc_dropout / deep_ensemble) and task that serve it,
whether every such file has it, and what it means. The exporters declare their graph outputs from it
(:mod:`deploykit.export.contract_onnx`), validation and the server check a file's outputs against it before
reading any value (:func:`check_outputs`), the server's v2 metadata describes each output from it, the
predictor reads every output it lists, and the README's served-outputs table is generated from it
(:func:`markdown_table`). A new served output is one row here (and the graph code that produces it).

A file that lacks an optional output (written before it existed, or exported without it) is read as it is:
readers require only the rows marked ``required`` and ignore outputs the table does not list.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from deploykit.errors import OutputContractError

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"  # the deterministic classifier's output
LOGITS_NAME = "logits"  # a logits classifier's deterministic output, beside `probabilities` computed in the graph
PREDICTION_NAME = "prediction"  # a regressor's deterministic output [N, K]: one column per target
SAMPLES_NAME = "samples"  # the MC model's optional input: how many dropout samples
SAMPLES_OUTPUT = "sample_probabilities"  # MC, optional: [T, N, C]
MEMBERS_OUTPUT = "member_probabilities"  # ensemble, optional: [K, N, C]
SAMPLE_PREDICTIONS_OUTPUT = "sample_predictions"  # regression MC, optional: [T, N, K]
MEMBER_PREDICTIONS_OUTPUT = "member_predictions"  # regression ensemble, optional: [K, N, K]
ABSTAIN_OUTPUT = "abstain"  # selective prediction: bool [N], true where the model declines to decide
PREDICTION_SET_OUTPUT = "prediction_set"  # conformal classification: bool [N, C], the classes in the set
SET_SIZE_OUTPUT = "set_size"  # conformal classification: int64 [N], how many classes the set holds
LOWER_OUTPUT = "lower"  # conformal regression: [N, K], the interval's lower end per target
UPPER_OUTPUT = "upper"  # conformal regression: [N, K], its upper end


class ModelKind(str, enum.Enum):
    """``deploykit.kind``: what a deploykit ONNX model computes (a str, so the JSON metadata holds its value)."""

    DETERMINISTIC = "deterministic"
    MC_DROPOUT = "mc_dropout"
    DEEP_ENSEMBLE = "deep_ensemble"

    __str__ = str.__str__


# The names the exporters and readers use for the kinds.
KIND_DETERMINISTIC = ModelKind.DETERMINISTIC
KIND_MC_DROPOUT = ModelKind.MC_DROPOUT
KIND_ENSEMBLE = ModelKind.DEEP_ENSEMBLE


#: The symbolic axes of :attr:`OutputSpec.shape`: what each stands for (the README's words).
AXES = {
    "N": "the batch: one entry per input row",
    "classes": "one entry per class label (a binary model: 2)",
    "targets": "one entry per regression target (several named outputs: side by side)",
    "units": "the model's output units: one per class, 1 for a binary model's logit",
    "T": "one entry per dropout sample (an ensemble of MC members: K x T)",
    "K": "one entry per ensemble member",
}
#: Axes whose size is the request's or the file's own (never checked against the data).
FREE_AXES = frozenset({"N", "T", "K"})
#: dtype names (numpy's) -> onnxruntime's NodeArg type, and back.
ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "bool": "tensor(bool)"}
UNCERTAIN = (ModelKind.MC_DROPOUT, ModelKind.DEEP_ENSEMBLE)
ALL_KINDS = tuple(ModelKind)
_CLASSIFIER_KINDS = ("probabilities", "logits", "sigmoid", "binary_logits")  # deploykit.core.task.OutputKind values
_OUTPUT_KINDS = (*_CLASSIFIER_KINDS, "values")


@dataclass(frozen=True)
class OutputSpec:
    """One served output: what a reader may expect of a tensor of this name in a file of these kinds and task."""

    name: str
    dtype: str  # numpy's name: float32, int64, bool
    shape: tuple[str, ...]  # symbolic axes (AXES); the sample / member axis first when there is one
    kinds: tuple[ModelKind, ...]  # the model kinds that serve it
    task: str
    description: str  # served as the output's `parameters.description`; the README's meaning column
    when: str = ""  # what adds an optional output ("" : every file of its kinds and task has it)
    output_kinds: tuple[str, ...] = ()  # a deterministic output: the output kinds that serve it (all: empty)

    @property
    def required(self) -> bool:
        return not self.when

    @property
    def sample_first(self) -> bool:
        """Its first axis is the sample or member, its second the batch."""
        return self.shape[0] in ("T", "K")

    @property
    def per_sample(self) -> bool:
        """Its size grows with the request's ``samples`` (an MC model's per-sample outputs)."""
        return self.shape[0] == "T"

    def serves(self, kind: ModelKind, task: str, output_kind: str | None = None) -> bool:
        """Whether a file of this kind and task (and deterministic output kind, when known) may have it."""
        return (
            kind in self.kinds
            and task == self.task
            and (output_kind is None or not self.output_kinds or output_kind in self.output_kinds)
        )


_MC_MEAN = "mean over the T dropout samples (MC) or the K members (ensemble)"

#: The tasks and output kinds by their values: deploykit.core.task.Task and OutputKind are str enums and compare equal
#: to them (the contract imports no deploykit module but errors: deploykit.core.task reaches it through multi_io).
C, R = "classification", "regression"
DET, ENSEMBLE = (ModelKind.DETERMINISTIC,), (ModelKind.DEEP_ENSEMBLE,)
_SET = "`--conformal` (`deploykit.conformal`)"
_SAMPLED = "`include_samples` (an ensemble of MC members: K x T samples)"


def _row(name: str, typed: str, kinds, task: str, description: str, when: str = "", output_kinds=()) -> OutputSpec:
    """A row from its dtype and shape written as the README shows them: ``"float32 [N, classes]"``."""
    dtype, _, shape = typed.partition(" ")
    return OutputSpec(name, dtype, tuple(shape.strip("[]").split(", ")), kinds, task, description, when, output_kinds)


#: Every served output, in the order a reader lists them: the main ones first, then the optional ones.
# fmt: off
OUTPUTS: tuple[OutputSpec, ...] = (
    _row(OUTPUT_NAME, "float32 [N, classes]", DET, C, "class probabilities (softmax), one per class label",
         output_kinds=_CLASSIFIER_KINDS),
    _row(LOGITS_NAME, "float32 [N, units]", DET, C,
         "the classifier's raw scores before the softmax (probabilities = softmax(logits)); a binary "
         "classifier's one logit [N, 1] (P(class 1) = sigmoid(logit))",
         output_kinds=("logits", "binary_logits")),
    _row(PREDICTION_NAME, "float32 [N, targets]", DET, R,
         "the regressor's predictions, one column per target, in the targets' units"),
    _row("mean", "float32 [N, classes]", UNCERTAIN, C, f"{_MC_MEAN} of the class probabilities: the prediction"),
    _row("std", "float32 [N, classes]", UNCERTAIN, C,
         "standard deviation over the samples or members of each class probability (population std, in "
         "probability units)"),
    _row("predictive_entropy", "float32 [N]", UNCERTAIN, C,
         "entropy of `mean` in nats (natural log), from 0 to ln(classes): total uncertainty"),
    _row("mutual_information", "float32 [N]", UNCERTAIN, C,
         "predictive_entropy minus the average entropy of the samples or members, in nats: the model's own "
         "(epistemic) uncertainty, high when they disagree"),
    _row("predicted_class", "int64 [N]", UNCERTAIN, C,
         "index of the largest `mean` (argmax of mean), an index into class_labels"),
    _row("mean", "float32 [N, targets]", UNCERTAIN, R,
         f"{_MC_MEAN} of each target's prediction, in the targets' units: the prediction"),
    _row("std", "float32 [N, targets]", UNCERTAIN, R,
         "standard deviation over the samples or members of each target's prediction (population std, in the "
         "targets' units, times the stored std scale): mean +- 1.96 std is the central 95% interval"),
    _row(SAMPLES_OUTPUT, "float32 [T, N, classes]", UNCERTAIN, C,
         "class probabilities of each dropout sample, shape [T, N, classes] (samples first)", _SAMPLED),
    _row(MEMBERS_OUTPUT, "float32 [K, N, classes]", ENSEMBLE, C,
         "class probabilities of each ensemble member, shape [K, N, classes] (members first)", "`include_members`"),
    _row(SAMPLE_PREDICTIONS_OUTPUT, "float32 [T, N, targets]", UNCERTAIN, R,
         "regression predictions of each dropout sample, shape [T, N, targets] (samples first)", _SAMPLED),
    _row(MEMBER_PREDICTIONS_OUTPUT, "float32 [K, N, targets]", ENSEMBLE, R,
         "regression predictions of each ensemble member, shape [K, N, targets] (members first)",
         "`include_members`"),
    *(
        _row(ABSTAIN_OUTPUT, "bool [N]", ALL_KINDS, task,
             "true where the model declines to decide: its uncertainty measure is above the threshold "
             "chosen on the validation split (abstain_threshold, abstain_measure)",
             "a selective threshold (`deploykit.selective`; the server computes it when the graph lacks it)")
        for task in (C, R)
    ),
    _row(PREDICTION_SET_OUTPUT, "bool [N, classes]", ALL_KINDS, C,
         "conformal prediction set: true for each class in the set; the set holds the true class with "
         "probability >= the stated coverage (deploykit.conformal: method, alpha, threshold)", _SET),
    _row(SET_SIZE_OUTPUT, "int64 [N]", ALL_KINDS, C,
         "how many classes the conformal prediction set holds (1: a confident decision, more: ambiguous)", _SET),
    _row(LOWER_OUTPUT, "float32 [N, targets]", ALL_KINDS, R,
         "lower end of the conformal interval per target (targets' units): [lower, upper] holds the target "
         "with probability >= the stated coverage (deploykit.conformal)", _SET),
    _row(UPPER_OUTPUT, "float32 [N, targets]", ALL_KINDS, R,
         "upper end of the conformal interval per target (targets' units)", _SET),
)
# fmt: on


def spec(name: str, task: str, kind: ModelKind | None = None) -> OutputSpec | None:
    """The row of output ``name`` in a file of ``task`` (and ``kind``); None for an output the table does not list."""
    return next((o for o in OUTPUTS if o.name == name and o.task == task and (kind is None or kind in o.kinds)), None)


def outputs_of(
    kind: ModelKind, task: str, output_kind: str | None = None, *, required: bool | None = None
) -> tuple[str, ...]:
    """The names a file of this kind and task serves, in table order (``required``: only the required ones /
    only the optional ones)."""
    return tuple(
        o.name for o in OUTPUTS if o.serves(kind, task, output_kind) and (required is None or o.required is required)
    )


def description(name: str, task: str, kind: ModelKind | None = None) -> str | None:
    """What output ``name`` means (the v2 metadata's ``parameters.description``); None when the table lacks it."""
    row = spec(name, task, kind)
    return None if row is None else row.description


def _deterministic(kind: str) -> tuple[str, ...]:
    """A deterministic model's outputs by output kind, the main one (probabilities / prediction) last."""
    task = R if kind == "values" else C
    names = outputs_of(ModelKind.DETERMINISTIC, task, kind, required=True)
    return tuple(sorted(names, key=lambda n: n in (OUTPUT_NAME, PREDICTION_NAME)))


#: The outputs kept apart from ``mean`` / ``std`` by their first axis (samples or members, then the batch).
SAMPLE_FIRST_OUTPUTS = tuple(dict.fromkeys(o.name for o in OUTPUTS if o.sample_first))
#: Outputs whose first axis grows with the request's ``samples``.
PER_SAMPLE_OUTPUTS = tuple(dict.fromkeys(o.name for o in OUTPUTS if o.per_sample))


#: A deterministic model's outputs by its output kind (deploykit.core.task.OutputKind value), the main one last:
#: a logits classifier exports its logits and the probabilities computed from them in the graph.
#: A binary head (one sigmoid or linear unit) serves two-class `probabilities` [N, 2] = [1 - P(class 1), P(class 1)].
DETERMINISTIC_OUTPUTS = {k: _deterministic(k) for k in _OUTPUT_KINDS}
#: The uncertainty outputs of an MC Dropout or deep-ensemble classifier, in this order.
OUTPUT_NAMES = outputs_of(ModelKind.MC_DROPOUT, C, required=True)
#: The uncertainty outputs of a regression MC Dropout or ensemble model ([N, K] each), in this order.
REGRESSION_OUTPUT_NAMES = outputs_of(ModelKind.MC_DROPOUT, R, required=True)
#: The conformal outputs (deploykit.uncertainty.conformal_graph), served and predicted when the graph has them.
CONFORMAL_OUTPUTS = (PREDICTION_SET_OUTPUT, SET_SIZE_OUTPUT, LOWER_OUTPUT, UPPER_OUTPUT)
#: What each output means (a classifier's reading where the tasks differ): :func:`description` is the full lookup.
GLOSSARY = {n: description(n, C) or description(n, R) for n in dict.fromkeys(o.name for o in OUTPUTS)}
#: What a regression MC / ensemble model's outputs mean (they replace the classifier's entries of GLOSSARY).
REGRESSION_GLOSSARY = {n: description(n, R, ModelKind.MC_DROPOUT) for n in REGRESSION_OUTPUT_NAMES}


class MaskKind(enum.Enum):
    """How the MC graph draws each dropout mask (``MCConfig.mask``, ``[mc] mask``, ``deploykit mc --mask``)."""

    AUTO = "auto"  # POOL when its tables cost at most half the model's float32 weights, else DROPOUT (the default)
    POOL = "pool"  # a window of a pre-drawn table at a random offset per row (one Gather)
    DROPOUT = "dropout"  # ONNX Dropout in training mode: one random draw per element


class Measure(enum.Enum):
    """The uncertainty a selective threshold applies to (``measure`` in ``deploykit.selective``); all are >= 0."""

    MAX_PROB = "max_prob"  # 1 - the largest (mean) probability
    ENTROPY = "entropy"  # of the (mean) probabilities, in nats: ``predictive_entropy`` of an MC / ensemble model
    MUTUAL_INFORMATION = "mutual_information"  # MC / ensemble only
    INTERVAL_WIDTH = (
        "interval_width"  # regression MC / ensemble: width of the central 95% interval, 2 z std, mean over targets
    )


INTERVAL_Z = 1.959963984540054  # INTERVAL_WIDTH = 2 * INTERVAL_Z * std: the central 95% interval of N(mean, std^2)
ABSTAIN_RULE = "abstain when measure > threshold"

METADATA_PREFIX = "deploykit."  # every deploykit metadata_props key; the values are JSON text
TEMPERATURE_KEY = METADATA_PREFIX + "temperature"  # {temperature, placement, fitted_on, count, nll_before, nll_after}
SELECTIVE_KEY = METADATA_PREFIX + "selective"  # {measure, threshold, rule, target_accuracy, target_coverage, ...}
ENSEMBLE_KEY = METADATA_PREFIX + "ensemble"  # {members: [file names]}
REPORT_FILE = "report.json"  # what deploykit optimize writes beside its artifacts (`objective`: what it recommends)
RECOMMENDED_MODEL = "recommended"  # the served name of the recommended ONNX model (serve of an optimize folder, Triton)
ENSEMBLE_FILE = "ensemble.onnx"  # what deploykit ensemble (and optimize's [ensemble] step) writes
MEMBERS_DIR = "members"  # beside it: member{k}.onnx (the int8 members) and member{k}.keras (their optimized models)
STD_SCALE_KEY = METADATA_PREFIX + "std_scale"  # regression: {std_scale, fitted_on, count, nll_before, nll_after}
CONFORMAL_KEY = METADATA_PREFIX + "conformal"  # {method, alpha, coverage, n, threshold, by_class, rule, ...}
TASK_KEY = (
    METADATA_PREFIX + "task"
)  # {task: deploykit.core.task.Task value, output: deploykit.core.task.OutputKind value}
#: A model with several outputs (deploykit.core.multi_io), MC: which columns of ``mean`` / ``std`` hold each output,
#: {output name: [first column, end column)}, outputs side by side in the order of their names.
OUTPUT_COLUMNS_KEY = METADATA_PREFIX + "output_columns"


def main_output(names) -> str:
    """The output validation and serving read from a deterministic model: probabilities, else the prediction, else
    the first."""
    names = list(names)
    return next((n for n in (OUTPUT_NAME, PREDICTION_NAME) if n in names), names[0])


def file_task(task_entry, outputs: Sequence[str]) -> str:
    """What a file predicts: its ``deploykit.task`` entry ({task, output}, or the task alone), else its outputs
    (a regressor's ``prediction``, or ``mean`` and ``std`` without the classifier's ``predictive_entropy``)."""
    task = task_entry.get("task") if isinstance(task_entry, dict) else task_entry
    if task in (C, R):
        return task
    names = set(outputs)
    regression = PREDICTION_NAME in names or (
        set(REGRESSION_OUTPUT_NAMES) <= names and not set(OUTPUT_NAMES) - set(REGRESSION_OUTPUT_NAMES) & names
    )
    return R if regression else C


def declared_outputs(node_args) -> dict[str, tuple[str, list]]:
    """{name: (dtype, shape)} of onnxruntime NodeArgs (``session.get_outputs()``), as :func:`check_outputs` reads
    them."""
    dtypes = {ort: dtype for dtype, ort in ORT_TYPES.items()}
    return {o.name: (dtypes.get(o.type, o.type), list(o.shape)) for o in node_args}


def check_outputs(
    where: str,
    found: Mapping[str, tuple[str, Sequence]],
    kind: ModelKind,
    task: str,
    sizes: Mapping[str, int] | None = None,
    *,
    output_kind: str | None = None,
    required: bool = True,
) -> None:
    """Raise :class:`OutputContractError` naming the first output of ``found`` ({name: (dtype, shape)}) that
    breaks the table: a required one missing (with ``required``), or one of another dtype, rank or size.

    Shapes hold ints, or strings / None for a dynamic axis; ``sizes`` gives the symbolic axes' sizes
    (``classes``, ``targets``, ``units``) where the caller knows them. Outputs the table does not list are
    not checked (a newer or foreign output), nor are optional ones a file lacks (an older file).
    """
    if required:
        missing = [n for n in outputs_of(kind, task, output_kind, required=True) if n not in found]
        if missing:
            raise OutputContractError(
                f"{where}: a {ModelKind(kind).value} {task} model needs the output {missing[0]!r}; "
                f"it has {sorted(found)}"
            )
    for name, (dtype, shape) in found.items():
        row = spec(name, task, kind)
        if row is None:
            continue
        problem = _mismatch(row, dtype, list(shape), sizes or {})
        if problem:
            raise OutputContractError(f"{where}: output {name!r} {problem}")


def _mismatch(row: OutputSpec, dtype: str, shape: list, sizes: Mapping[str, int]) -> str:
    want = [sizes.get(a, a) for a in row.shape]
    if dtype != row.dtype:
        return f"is {dtype}, the contract says {row.dtype} {want}"
    if len(shape) != len(row.shape):
        return f"has shape {shape}, the contract says {want} ({len(row.shape)} axes)"
    for axis, (got, symbol) in enumerate(zip(shape, row.shape)):
        size = sizes.get(symbol)
        if symbol in FREE_AXES or size is None or not isinstance(got, int) or got <= 0:
            continue  # a free or unknown axis, or one the file leaves dynamic
        if got != size:
            return f"has {got} entries on axis {axis} ({symbol}), the contract says {size}: shape {shape}, want {want}"
    return ""


def _served_by(rows: list[OutputSpec]) -> str:
    row = rows[0]
    kinds = {DET: "deterministic", UNCERTAIN: "MC / ensemble", ENSEMBLE: "ensemble", ALL_KINDS: "any"}[row.kinds]
    task = "models" if len(rows) > 1 else {C: "classifiers", R: "regressors"}[row.task]
    only = [str(k) for k in row.output_kinds if row.output_kinds != _CLASSIFIER_KINDS]
    return f"{kinds} {task}" + (f" ({', '.join(only)})" if only else "") + (f"; with {row.when}" if row.when else "")


def markdown_table() -> str:
    """The README's served-outputs table, generated from :data:`OUTPUTS` (a test holds the README to it); an
    output both tasks serve alike is one line."""
    merged: dict[tuple, list[OutputSpec]] = {}
    for row in OUTPUTS:
        merged.setdefault((row.name, row.dtype, row.shape, row.kinds, row.description, row.when), []).append(row)
    lines = ["| output | served by | dtype | shape | meaning |", "|---|---|---|---|---|"]
    for rows in merged.values():
        row = rows[0]
        shape = "[" + ", ".join(row.shape) + "]"
        lines.append(f"| `{row.name}` | {_served_by(rows)} | {row.dtype} | {shape} | {row.description} |")
    return "\n".join(lines) + "\n"
