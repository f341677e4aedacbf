"""The tensor and metadata contract of deploykit's ONNX models: the names export, uncertainty and serve share.

Pure Python on purpose (no numpy, onnx or TensorFlow): ``deploykit serve``
imports it without pulling in the exporters, and the exporters import it to
write what the server reads. A name changed here changes on both sides.

Model kinds (``deploykit.kind`` in ``metadata_props``) and their tensors:

- deterministic: input ``input`` [N, ...] -> ``probabilities`` [N, C] (a logits classifier: ``logits`` and
  ``probabilities``; a regressor: ``prediction`` [N, K]);
- mc_dropout: ``input`` and an optional ``samples`` (int64 scalar) -> the
  uncertainty outputs below, optionally ``sample_probabilities`` [T, N, C];
- deep_ensemble: ``input`` -> the same uncertainty outputs, optionally
  ``member_probabilities`` [K, N, C].

A regression MC / ensemble model outputs ``mean`` and ``std`` [N, K] instead (optionally the
``sample_predictions`` / ``member_predictions`` [T or K, N, K]). ``deploykit.task`` says which.

Any of them may carry ``abstain`` (bool [N]) with the ``deploykit.selective``
metadata that says how it was decided, and the conformal outputs (``prediction_set`` bool [N, C] and
``set_size`` [N]; a regressor's ``lower`` / ``upper`` [N, K]) with the ``deploykit.conformal`` metadata.
"""

from __future__ import annotations

import enum

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"  # the deterministic classifier's output
LOGITS_NAME = "logits"  # a logits classifier's deterministic output, beside `probabilities` computed in the graph
PREDICTION_NAME = "prediction"  # a regressor's deterministic output [N, K]: one column per target
SAMPLES_NAME = "samples"  # the MC model's optional input: how many dropout samples
#: A deterministic model's outputs by its output kind (deploykit.task.OutputKind value), the main one last:
#: a logits classifier exports its logits and the probabilities computed from them in the graph.
#: A binary head (one sigmoid or linear unit) serves two-class `probabilities` [N, 2] = [1 - P(class 1), P(class 1)].
DETERMINISTIC_OUTPUTS = {
    "probabilities": (OUTPUT_NAME,),
    "logits": (LOGITS_NAME, OUTPUT_NAME),
    "values": (PREDICTION_NAME,),
    "sigmoid": (OUTPUT_NAME,),
    "binary_logits": (LOGITS_NAME, OUTPUT_NAME),
}
#: The uncertainty outputs of an MC Dropout or deep-ensemble model, in this order.
OUTPUT_NAMES = ("mean", "std", "predictive_entropy", "mutual_information", "predicted_class")
SAMPLES_OUTPUT = "sample_probabilities"  # MC, optional: [T, N, C]
MEMBERS_OUTPUT = "member_probabilities"  # ensemble, optional: [K, N, C]
#: The uncertainty outputs of a regression MC Dropout or ensemble model ([N, K] each), in this order.
REGRESSION_OUTPUT_NAMES = ("mean", "std")
SAMPLE_PREDICTIONS_OUTPUT = "sample_predictions"  # regression MC, optional: [T, N, K]
MEMBER_PREDICTIONS_OUTPUT = "member_predictions"  # regression ensemble, optional: [K, N, K]
#: Outputs whose first axis is the sample / member and whose second is the batch.
SAMPLE_FIRST_OUTPUTS = (SAMPLES_OUTPUT, MEMBERS_OUTPUT, SAMPLE_PREDICTIONS_OUTPUT, MEMBER_PREDICTIONS_OUTPUT)
ABSTAIN_OUTPUT = "abstain"  # selective prediction: bool [N], true where the model declines to decide
PREDICTION_SET_OUTPUT = "prediction_set"  # conformal classification: bool [N, C], the classes in the set
SET_SIZE_OUTPUT = "set_size"  # conformal classification: int64 [N], how many classes the set holds
LOWER_OUTPUT = "lower"  # conformal regression: [N, K], the interval's lower end per target
UPPER_OUTPUT = "upper"  # conformal regression: [N, K], its upper end
#: The conformal outputs (deploykit.uncertainty.conformal_graph), served and predicted when the graph has them.
CONFORMAL_OUTPUTS = (PREDICTION_SET_OUTPUT, SET_SIZE_OUTPUT, LOWER_OUTPUT, UPPER_OUTPUT)


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
TASK_KEY = METADATA_PREFIX + "task"  # {task: deploykit.task.Task value, output: deploykit.task.OutputKind value}
#: A model with several outputs (deploykit.multi_io), MC: which columns of ``mean`` / ``std`` hold each output,
#: {output name: [first column, end column)}, outputs side by side in the order of their names.
OUTPUT_COLUMNS_KEY = METADATA_PREFIX + "output_columns"

#: What each output means: served in the model metadata (``parameters.description`` of each output).
GLOSSARY = {
    OUTPUT_NAME: "class probabilities (softmax), one per class label",
    LOGITS_NAME: "the classifier's raw scores before the softmax (probabilities = softmax(logits)); a binary "
    "classifier's one logit [N, 1] (P(class 1) = sigmoid(logit))",
    PREDICTION_NAME: "the regressor's predictions, one column per target, in the targets' units",
    "mean": "mean over the T dropout samples (MC) or the K members (ensemble) of the class probabilities: "
    "the prediction",
    "std": "standard deviation over the samples or members of each class probability (population std, "
    "in probability units)",
    "predictive_entropy": "entropy of `mean` in nats (natural log), from 0 to ln(classes): total uncertainty",
    "mutual_information": "predictive_entropy minus the average entropy of the samples or members, in nats: the "
    "model's own (epistemic) uncertainty, high when they disagree",
    "predicted_class": "index of the largest `mean` (argmax of mean), an index into class_labels",
    SAMPLES_OUTPUT: "class probabilities of each dropout sample, shape [T, N, classes] (samples first)",
    MEMBERS_OUTPUT: "class probabilities of each ensemble member, shape [K, N, classes] (members first)",
    SAMPLE_PREDICTIONS_OUTPUT: "regression predictions of each dropout sample, shape [T, N, targets] (samples first)",
    MEMBER_PREDICTIONS_OUTPUT: "regression predictions of each ensemble member, shape [K, N, targets] (members first)",
    ABSTAIN_OUTPUT: "true where the model declines to decide: its uncertainty measure is above the threshold "
    "chosen on the validation split (abstain_threshold, abstain_measure)",
    PREDICTION_SET_OUTPUT: "conformal prediction set: true for each class in the set; the set holds the true class "
    "with probability >= the stated coverage (deploykit.conformal: method, alpha, threshold)",
    SET_SIZE_OUTPUT: "how many classes the conformal prediction set holds (1: a confident decision, more: ambiguous)",
    LOWER_OUTPUT: "lower end of the conformal interval per target (targets' units): [lower, upper] holds the target "
    "with probability >= the stated coverage (deploykit.conformal)",
    UPPER_OUTPUT: "upper end of the conformal interval per target (targets' units)",
}
#: What a regression MC / ensemble model's outputs mean (they replace the classifier's entries of GLOSSARY).
REGRESSION_GLOSSARY = {
    "mean": "mean over the T dropout samples (MC) or the K members (ensemble) of each target's prediction, in the "
    "targets' units: the prediction",
    "std": "standard deviation over the samples or members of each target's prediction (population std, in the "
    "targets' units, times the stored std scale): mean +- 1.96 std is the central 95% interval",
}
