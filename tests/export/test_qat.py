"""Issue 22: the quantization-aware rung (deploykit.export.qat). A pruned model fine-tuned with TF-MOT's
prune-preserving QAT scheme keeps its zeros in the int8 file, the file runs in LiteRT, and a layer TF-MOT cannot
quantize gives a reason instead of a crash."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import ConversionError
from deploykit.export.qat import QAT_RATE_SHARE, bounded, kernel_zeros, quantization_aware, unsupported


def _book_style(classes: int = 10, width: int = 32, elu_layer: bool = True, bn: bool = True):
    """The book's layout in small: Dense -> BatchNorm -> Activation("elu") -> Dropout, a softmax head (tf_keras).
    Without ``bn``: as the int8 preparation leaves it (BatchNorm folded; TF-MOT's QAT takes no standalone one)."""
    from deploykit.backend import keras, set_seed

    set_seed(0)
    act = keras.layers.Activation("elu") if elu_layer else keras.layers.Activation("selu")
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(width, use_bias=False, kernel_initializer="he_normal"),
            *([keras.layers.BatchNormalization()] if bn else []),
            act,
            keras.layers.Dropout(0.2),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )


def _prune_by_magnitude(model, share: float = 0.8) -> None:
    """Zero the smallest ``share`` of every Dense kernel (what a stripped TF-MOT pruned model holds)."""
    for layer in model.layers:
        if type(layer).__name__ == "Dense":
            kernel = layer.kernel.numpy()
            kernel[np.abs(kernel) < np.quantile(np.abs(kernel), share)] = 0
            layer.kernel.assign(kernel)


def _int8_kernels(path) -> dict[tuple[int, ...], np.ndarray]:
    """The int8 constant 2-D tensors of a .tflite file, read from its flatbuffer (by shape)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
    found = {}
    for tensor in model.subgraphs[0].tensors:
        data = model.buffers[tensor.buffer].data
        if tensor.type == schema.TensorType.INT8 and data is not None and len(tensor.shape) == 2:
            found[tuple(int(d) for d in tensor.shape)] = np.frombuffer(bytes(bytearray(data)), np.int8).reshape(
                tensor.shape
            )
    return found


def test_a_layer_tfmot_cannot_quantize_gives_a_reason_not_a_crash():
    from deploykit.backend import keras

    reason = unsupported(_book_style(elu_layer=False, bn=False))
    assert reason is not None and "selu" in reason and "activation" in reason
    with pytest.raises(ConversionError, match="quantization-aware fine-tune skipped: .*selu"):
        quantization_aware(_book_style(elu_layer=False, bn=False))
    rnn = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4, name="lstm"), keras.layers.Dense(2)])
    assert "'lstm' (LSTM)" in unsupported(rnn)
    dense_elu = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="elu", name="d")])
    assert "'d' (Dense) has activation 'elu'" in unsupported(dense_elu)
    assert "BatchNormalization" in unsupported(_book_style())  # not folded (optimize --no-fold)


def test_a_keras3_model_is_refused_with_a_reason():
    import keras as keras3

    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2, activation="softmax")])
    assert "tf_keras" in unsupported(model)


def test_the_elu_layer_of_the_books_network_is_quantized_and_zeros_are_kept_by_the_scheme():
    model = _book_style(bn=False)
    _prune_by_magnitude(model)
    assert unsupported(model) is None
    qat = quantization_aware(model)
    names = [type(getattr(layer, "layer", layer)).__name__ for layer in qat.layers]
    assert "Activation" in names and "QuantizeLayer" in names
    assert kernel_zeros(qat) == kernel_zeros(model)  # the same weights, wrapped


def test_the_fine_tune_is_bounded():
    from deploykit.sparsity.config import PruneConfig

    tuning = bounded(PruneConfig(epochs=10, learning_rate=5e-4, distill=True))
    assert tuning.config.epochs == 2 and tuning.config.learning_rate == pytest.approx(5e-4 * QAT_RATE_SHARE)
    assert tuning.config.temperature == 1.0 and tuning.config.alpha == 1.0  # the teacher's own probabilities
    assert "distilled" in tuning.describe() and "sparsity kept" in tuning.describe()
    labels = bounded(PruneConfig(distill=False)).config
    assert not labels.distill and labels.alpha == PruneConfig().alpha
    assert bounded(PruneConfig(epochs=1)).config.epochs == 1


@pytest.mark.slow
def test_the_quantization_aware_file_keeps_the_pruned_zeros_and_runs_in_litert(tmp_path, digits):
    from deploykit.backend import keras
    from deploykit.export import validate
    from deploykit.export.qat import export_quantization_aware
    from deploykit.sparsity.config import PruneConfig

    model = _book_style()
    model.compile(keras.optimizers.Nadam(1e-3), "sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=2, batch_size=64, verbose=0)
    _prune_by_magnitude(model)
    zeros = {layer.name: layer.kernel.numpy() == 0 for layer in model.layers if type(layer).__name__ == "Dense"}
    record = export_quantization_aware(
        model, tmp_path / "model_int8-full.tflite", digits, tuning=bounded(PruneConfig(epochs=1, distill=True))
    )
    assert any("quantization-aware fine-tune" in step for step in record.preparation)
    kernels = _int8_kernels(record.path)
    for name, mask in zeros.items():
        stored = kernels[mask.T.shape]  # TFLite keeps a Dense kernel as [out, in]
        assert mask.mean() >= 0.79, name
        assert np.all(stored[mask.T] == 0), f"{name}: a pruned weight is not zero in the int8 file"
    report = validate(record, digits, reference=model, repeats=1, batch_sizes=(1,), check=False)
    assert report.accuracy is not None and report.agreement is not None
    assert report.max_abs_diff < 1.0  # probabilities: the file ran and returned them


def test_the_fine_tune_reads_the_softmax_head_through_tfmots_wrapper():
    """The loss is chosen from the last layer's activation: TF-MOT's QuantizeAwareActivation hides it (read as
    linear, the softmax's probabilities would be trained as logits)."""
    from deploykit.core.task import OutputKind, layer_kind

    assert layer_kind(quantization_aware(_book_style(bn=False))) is OutputKind.PROBABILITIES
