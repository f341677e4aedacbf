"""int8 preparation of conv kernels: clipped per output channel, every requantization multiplier bounded.

The conv analogue of test_int8_crash: an input channel constant in the training data (std 0) is
standardized by a Normalization, and folding it into the first conv multiplies that channel's kernel
slice by 1/sqrt(epsilon). Every output channel's int8 scale then follows that slice, and its
ordinary weights round to zero, unless ``prepare_for_int8`` clips them.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.export.int8_clip import INT8_LEVELS, MAX_REQUANTIZATION, clip_kernel, receptive_fields

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _range_scale(values) -> float:
    return float(max(values.max(), 0.0) - min(values.min(), 0.0)) / 255.0


def _conv_spec(kernel, **config):
    name = "DepthwiseConv2D" if config.pop("depthwise", False) else "Conv2D"
    units = kernel.shape[-1] * (kernel.shape[-2] if name == "DepthwiseConv2D" else 1)
    config = {
        "name": "conv",
        "kernel_size": kernel.shape[:2],
        "strides": (1, 1),
        "dilation_rate": (1, 1),
        "padding": "valid",
        "use_bias": True,
        "activation": "linear",
        **config,
    }
    from deploykit.core.graph import LayerSpec

    return LayerSpec(name, config, [kernel.astype(np.float32), np.zeros(units, np.float32)])


def _conv(x, spec):
    from deploykit.backend import tf

    kernel = tf.constant(spec.weights[0], tf.float32)
    x = tf.constant(x, tf.float32)
    if spec.class_name == "DepthwiseConv2D":
        y = tf.nn.depthwise_conv2d(x, kernel, (1, 1, 1, 1), "VALID")
    else:
        y = tf.nn.conv2d(x, kernel, 1, "VALID")
    return (y + spec.weights[1]).numpy().astype(np.float64)


@pytest.mark.parametrize("depthwise", [False, True])
def test_a_channel_scaled_by_one_over_epsilon_is_clipped_and_multipliers_bounded(depthwise):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (40, 6, 6, 3))
    x[..., 0] = 0.0  # constant on the calibration data (std 0): its folded kernel slice is 1/1e-7 too large
    kernel = rng.normal(0, 0.1, (3, 3, 3, 2 if depthwise else 4))
    kernel[:, :, 0] = 0.1 / 1e-7
    kernel[0, 0, 1, 0] = 0.0  # zeros stay zeros
    spec = _conv_spec(kernel, depthwise=depthwise)
    reference = _conv(x, _conv_spec(kernel, depthwise=depthwise))
    clip = clip_kernel(spec, receptive_fields(spec, x, 10_000, np.random.default_rng(0)), _range_scale(x))
    clipped = spec.weights[0]
    out = _conv(x, spec)
    assert clip.columns == (6 if depthwise else 4)
    assert clipped[0, 0, 1, 0] == 0.0
    if depthwise:  # per channel: only the constant channel's two outputs hold the slice; bounded, the others kept
        assert clip.columns_clipped == clip.columns_bounded == 2
        np.testing.assert_array_equal(clipped[:, :, 1:], kernel[:, :, 1:].astype(np.float32))
    else:
        assert clip.columns_clipped == 4
        assert np.abs(clipped).max() <= 2 * np.abs(kernel[:, :, 1:]).max()  # scales follow the ordinary weights
    np.testing.assert_allclose(out, reference, atol=0.02 * np.abs(reference).max())
    weight_scale = np.abs(clipped).reshape(-1, clip.columns).max(axis=0) / INT8_LEVELS
    assert (_range_scale(x) * weight_scale / _range_scale(out)).max() <= MAX_REQUANTIZATION


@pytest.mark.parametrize(
    "kind, options, shape",
    [
        ("Conv2D", {"kernel_size": (3, 2), "strides": 2, "padding": "same"}, (9, 7, 3)),
        ("Conv2D", {"kernel_size": (3, 4), "strides": (2, 3), "padding": "same"}, (8, 10, 3)),
        ("Conv2D", {"kernel_size": 3, "dilation_rate": 2}, (9, 8, 3)),
        ("Conv1D", {"kernel_size": 3, "dilation_rate": 2, "padding": "causal"}, (10, 3)),
        ("Conv1D", {"kernel_size": 4, "strides": 2, "padding": "same"}, (11, 3)),
        ("DepthwiseConv2D", {"kernel_size": 3, "depth_multiplier": 2, "padding": "same"}, (6, 6, 3)),
    ],
)
def test_patches_are_the_convolutions_receptive_fields(kind, options, shape):
    """Every patch times the kernel is the conv's output at that position (strides, dilation, padding)."""
    from deploykit.backend import keras
    from deploykit.core.graph import graph_from_model

    layer = getattr(keras.layers, kind)(
        **({"filters": 5} if kind != "DepthwiseConv2D" else {}), **options, use_bias=False
    )
    model = keras.Sequential([keras.Input(shape), layer])
    x = np.random.default_rng(0).normal(size=(4, *shape))
    rows = receptive_fields(graph_from_model(model).nodes[0].spec, x, 10**6, np.random.default_rng(0))
    kernel = layer.get_weights()[0].astype(np.float64)
    if kind == "DepthwiseConv2D":
        taps, cin = int(np.prod(kernel.shape[:-2])), kernel.shape[-2]
        out = np.einsum("ntc,tcm->ncm", rows.reshape(len(rows), taps, cin), kernel.reshape(taps, cin, -1)).reshape(
            len(rows), -1
        )
    else:
        out = rows @ kernel.reshape(-1, kernel.shape[-1])
    expected = model(x).numpy().reshape(-1, model.output_shape[-1])
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-5)
    fewer = receptive_fields(graph_from_model(model).nodes[0].spec, x, 7, np.random.default_rng(1))
    assert len(fewer) == 7 and all((rows == r).all(axis=1).any() for r in fewer)  # a sample of the same windows


def image_data(digits):
    """The digits as 8x8 images with a second channel that is 0 everywhere (std 0 in training)."""
    from deploykit.data.dataset import Dataset

    def image(x):
        x = x.reshape(len(x), 8, 8, 1)
        return np.concatenate([x, np.zeros_like(x)], axis=-1)

    return Dataset(
        f"{digits.name}_zero_channel",
        image(digits.x_train),
        digits.y_train,
        image(digits.x_val),
        digits.y_val,
        image(digits.x_test),
        digits.y_test,
        digits.class_names,
    )


def small_cnn(data, seed: int = 0):
    """Normalization (per channel) -> valid Conv2D -> DepthwiseConv2D -> Conv1x1 -> GAP -> Dense, trained briefly."""
    from deploykit.backend import keras, set_seed

    set_seed(seed)
    L = keras.layers
    norm = L.Normalization(axis=-1)
    norm.adapt(data.x_train)
    model = keras.Sequential(
        [
            keras.Input(data.input_shape),
            norm,
            L.Conv2D(16, 3, activation="relu"),
            L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu"),
            L.Conv2D(16, 1, activation="relu"),
            L.GlobalAveragePooling2D(),
            L.Dense(10, activation="softmax"),
        ],
        name="zero_channel_cnn",
    )
    model.compile(optimizer=keras.optimizers.Nadam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=8, batch_size=32, verbose=0)
    return model


def conv_multipliers(path) -> dict[str, float]:
    """Largest requantization multiplier per op kind (input scale x weight scales / output scale) in a TFLite file."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    scales = {t["index"]: t["quantization_parameters"]["scales"] for t in interpreter.get_tensor_details()}
    found: dict[str, float] = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] in CONV_OPS:
            x, w = op["inputs"][:2]
            m = float((scales[x][0] * scales[w] / scales[op["outputs"][0]][0]).max())
            found[op["op_name"]] = max(found.get(op["op_name"], 0.0), m)
    return found


@pytest.mark.slow
def test_int8_cnn_with_a_zero_std_channel_stays_near_float(digits, tmp_path):
    from deploykit.core.evaluate import accuracy
    from deploykit.export import export_onnx, export_tflite, prepare_for_int8, validate

    data = image_data(digits)
    model = small_cnn(data)
    reference = accuracy(model, data.x_test, data.y_test)
    assert reference >= 0.75, "the small CNN should learn the digits"

    _, prep = prepare_for_int8(model, data.x_train[:256])
    first = prep.clipped[0]
    assert [c.name for c in prep.clipped][:3] == [l.name for l in model.layers[1:4]]  # both convs and the depthwise
    assert first.columns == 16 and first.columns_clipped == 16  # every channel held the 1/sqrt(eps) slice

    tflite = export_tflite(model, tmp_path / "model_int8-full.tflite", "int8-full", representative_data=data)
    multipliers = conv_multipliers(tflite.path)
    assert set(multipliers) == set(CONV_OPS) and max(multipliers.values()) <= MAX_REQUANTIZATION, multipliers
    onnx = export_onnx(model, tmp_path / "model_int8-static.onnx", quantization="int8-static", calibration_data=data)
    for record in (tflite, onnx):
        report = validate(record, data, model, repeats=1, check=False)
        assert report.accuracy_drop <= 0.02, report.summary()


@pytest.mark.slow
def test_int8_dynamic_leaves_convolutions_in_float_and_quantizes_dense(tmp_path):
    """A dynamically quantized Conv runs as ConvInteger, slower than float32 on onnxruntime's CPU provider:
    int8-dynamic quantizes the CNN's Dense head and leaves its convolutions float, and still matches."""
    import onnx
    import onnxruntime as ort

    from deploykit.backend import keras
    from deploykit.export import export_onnx

    rng = np.random.default_rng(0)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    x = rng.uniform(0, 1, (64, 12, 12, 1)).astype(np.float32)
    record = export_onnx(model, tmp_path / "d.onnx", quantization="int8-dynamic")
    ops = {n.op_type for n in onnx.load(str(record.path)).graph.node}
    assert "ConvInteger" not in ops and "Conv" in ops
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
    session = ort.InferenceSession(str(record.path), providers=["CPUExecutionProvider"])
    probs = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.mean(probs.argmax(1) == np.asarray(model(x, training=False)).argmax(1)) >= 0.95


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_int8_static_keeps_the_probability_head_in_float(tmp_path, head):
    """A QDQ-quantized Softmax / Sigmoid at the end of the graph rounds probabilities to the int8 step (1/256): the
    probabilities of an int8-static file are the float head's, never zero where the float model's are not."""
    import onnx
    import onnxruntime as ort

    from deploykit.backend import keras
    from deploykit.export import export_onnx

    rng = np.random.default_rng(0)
    units = 4 if head == "softmax" else 1
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(units, activation=head),
        ]
    )
    x = rng.uniform(0, 1, (64, 12, 12, 1)).astype(np.float32)
    record = export_onnx(model, tmp_path / "s.onnx", quantization="int8-static", calibration_data=x)
    graph = onnx.load(str(record.path)).graph
    assert {"QuantizeLinear", "Conv"} <= {n.op_type for n in graph.node}  # the body is int8 QDQ
    heads = [n for n in graph.node if n.op_type in ("Softmax", "Sigmoid")]  # a binary head serves softmax([0, z])
    assert heads
    for prob in heads:
        consumers = [n.op_type for n in graph.node if set(n.input) & set(prob.output)]
        assert "QuantizeLinear" not in consumers  # its output is float
    session = ort.InferenceSession(str(record.path), providers=["CPUExecutionProvider"])
    probs = session.run(None, {session.get_inputs()[0].name: x})[-1]
    steps = np.abs(probs * 256 - np.round(probs * 256))
    assert steps.max() > 1e-3  # not on the 1/256 grid an int8 output would put them on


def test_int8_static_of_a_transposed_conv1d_autoencoder_quantizes(tmp_path):
    """keras.io's timeseries anomaly detector (Conv1D / Conv1DTranspose, stride 2, 'same'): onnxruntime's symbolic
    shape inference raises an AssertionError on the ConvTranspose's output length, which aborted the whole optimize
    run. The pre-processing runs again without it, and the static int8 file is written and agrees in onnxruntime."""
    import onnx
    import onnxruntime as ort

    from deploykit.backend import keras
    from deploykit.export import export_onnx

    rng = np.random.default_rng(0)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((16, 1)),
            layers.Conv1D(8, 7, padding="same", strides=2, activation="relu"),
            layers.Conv1DTranspose(8, 7, padding="same", strides=2, activation="relu"),
            layers.Conv1DTranspose(1, 7, padding="same"),
        ]
    )
    x = rng.uniform(0, 1, (128, 16, 1)).astype(np.float32)
    record = export_onnx(model, tmp_path / "s.onnx", quantization="int8-static", calibration_data=x)
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(record.path)).graph.node}
    session = ort.InferenceSession(str(record.path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    expected = np.asarray(model(x, training=False))
    assert out.shape == expected.shape and np.abs(out - expected).max() < 0.1 * np.abs(expected).max()
    assert not list(tmp_path.glob("sym_shape_infer_temp*")) and sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx"]


def test_a_foreign_tool_s_failure_is_one_conversion_error_and_deploykit_s_own_pass_through():
    from deploykit.errors import ConversionError, DataError, converting

    with pytest.raises(
        ConversionError, match=r"^onnxruntime's static quantizer failed: AssertionError: sum of two more lines$"
    ):
        with converting("onnxruntime's static quantizer"):
            raise AssertionError("sum of two\nmore lines")
    with pytest.raises(DataError, match="^ours$"):
        with converting("a quantizer"):
            raise DataError("ours")
