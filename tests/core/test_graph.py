"""deploykit.core.graph: reading models as graphs, rewriting them, and building them back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.core.graph import graph_from_config, graph_from_model, to_keras
from deploykit.core.layers import ALIASES, SUPPORT, Role
from deploykit.errors import UnsupportedLayerError
from tests.core import models


def _inputs(model, seed=0):
    rng = np.random.default_rng(seed)
    if type(model.layers[0]).__name__ == "Embedding":
        return rng.integers(0, 20, (6, *model.input_shape[1:])).astype("float32")
    return rng.normal(size=(6, *model.input_shape[1:])).astype("float32")


ROUND_TRIP = (
    models.cnn,
    models.residual,
    models.every_layer,
    models.upsampling,
    models.embedding,
    models.recurrent,
    models.attention,
    models.attention_pooling,
)


def _built(build):
    """One model per builder, shared by the tests that only read it (:func:`tests.core.models.shared`)."""
    return models.shared(build.__name__)


@pytest.mark.parametrize("build", ROUND_TRIP)
def test_round_trip_graph_keras_graph_is_exact(build):
    model = _built(build)
    graph = graph_from_model(model)
    rebuilt = to_keras(graph)
    x = _inputs(model)
    assert np.array_equal(model(x, training=False).numpy(), rebuilt(x, training=False).numpy())
    again = graph_from_model(rebuilt)
    assert [(n.name, n.spec.class_name, n.inputs, n.shape) for n in again.nodes] == [
        (n.name, n.spec.class_name, n.inputs, n.shape) for n in graph.nodes
    ]
    assert type(rebuilt).__name__ == ("Sequential" if graph.path() is not None else "Functional")


def test_every_table_layer_is_covered_by_a_round_trip_model():
    seen = set()
    for build in ROUND_TRIP:
        seen |= {n.spec.class_name for n in graph_from_model(_built(build)).nodes}
    listed = {name for name, entry in SUPPORT.items() if entry.role not in (Role.INPUT, Role.OPAQUE)}
    # the dense-era layers are covered by tests/test_chain.py
    dense_era = {
        "Flatten",
        "Dense",
        "BatchNormalization",
        "Normalization",
        "AlphaDropout",
        "LeakyReLU",
        "PReLU",
        "ELU",
        "Softmax",
    }
    assert listed - seen - dense_era - set(ALIASES) == set()


def test_consumers_fan_out_bypass_replace_and_path():
    graph = graph_from_model(models.shared("residual"))  # the edits below change the graph, not the model
    assert [n.name for n in graph.consumers("a")] == ["c1", "add"] and graph.fan_out("a") == 2
    assert graph.path() is None
    assert graph.ancestors("add") >= {"pixels", "c0", "bn0", "a", "c1", "bn1"}
    graph.bypass("bn1")
    assert graph.node("add").inputs == ["c1", "a"]
    spec = graph.node("r").spec
    spec.config = {**spec.config, "activation": "tanh"}
    graph.replace("r", spec)
    model = to_keras(graph)
    assert "bn1" not in [l.name for l in model.layers] and model.get_layer("r").get_config()["activation"] == "tanh"
    with pytest.raises(ValueError, match="2 inputs"):
        graph.bypass("add")
    assert [n.name for n in graph_from_model(models.shared("cnn")).path()][0] == "conv2d" or graph_from_model(
        models.shared("cnn")
    ).path()


def test_keras3_and_tf_keras_configs_read_to_the_same_edges():
    tf_keras_config = {
        "class_name": "Functional",
        "config": {
            "name": "m",
            "input_layers": [["x", 0, 0]],
            "output_layers": [["add", 0, 0]],
            "layers": [
                {
                    "class_name": "InputLayer",
                    "config": {"name": "x", "batch_input_shape": [None, 4]},
                    "inbound_nodes": [],
                },
                {"class_name": "Dense", "config": {"name": "d"}, "inbound_nodes": [[["x", 0, 0, {}]]]},
                {"class_name": "Add", "config": {"name": "add"}, "inbound_nodes": [[["d", 0, 0, {}], ["x", 0, 0, {}]]]},
            ],
        },
    }

    def tensor(name):
        return {"class_name": "__keras_tensor__", "config": {"shape": [None, 4], "keras_history": [name, 0, 0]}}

    keras3_config = {
        "module": "keras",
        "class_name": "Functional",
        "config": {
            "name": "m",
            "input_layers": ["x", 0, 0],
            "output_layers": ["add", 0, 0],
            "layers": [
                {
                    "module": "keras.layers",
                    "class_name": "InputLayer",
                    "config": {"name": "x", "batch_shape": [None, 4]},
                    "inbound_nodes": [],
                },
                {
                    "module": "keras.layers",
                    "class_name": "Dense",
                    "config": {"name": "d"},
                    "inbound_nodes": [{"args": [tensor("x")], "kwargs": {}}],
                },
                {
                    "module": "keras.layers",
                    "class_name": "Add",
                    "config": {"name": "add"},
                    "inbound_nodes": [{"args": [[tensor("d"), tensor("x")]], "kwargs": {}}],
                },
            ],
        },
    }
    for config in (tf_keras_config, keras3_config):
        graph = graph_from_config(config)
        assert graph.inputs == {"x": (4,)} and graph.outputs == ["add"]
        assert [(n.name, n.inputs) for n in graph.nodes] == [("d", ["x"]), ("add", ["d", "x"])]


def test_shared_and_nested_layers_are_refused_by_name():
    from deploykit.backend import keras

    inputs = keras.Input(shape=(5,))
    shared = keras.layers.Dense(5, name="shared")
    with pytest.raises(UnsupportedLayerError, match="'shared'.*called 2 times"):
        graph_from_model(keras.Model(inputs, shared(shared(inputs))))
    inner = keras.Sequential([keras.Input(shape=(5,)), keras.layers.Dense(3)], name="inner")
    with pytest.raises(UnsupportedLayerError, match="'inner'.*nested"):
        graph_from_model(keras.Sequential([keras.Input(shape=(5,)), inner]))


def test_two_input_model_round_trips():
    from deploykit.backend import keras

    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    out = keras.layers.Dense(2, name="d")(keras.layers.Concatenate(name="cat")([a, b]))
    model = keras.Model([a, b], out)
    graph = graph_from_model(model)
    assert graph.inputs == {"a": (3,), "b": (2,)} and graph.node("cat").inputs == ["a", "b"]
    xa, xb = np.ones((2, 3), "float32"), np.ones((2, 2), "float32")
    assert np.array_equal(model([xa, xb]).numpy(), to_keras(graph)([xa, xb]).numpy())


def test_subclassed_and_unbuilt_models_are_refused_by_name():
    from deploykit.backend import keras

    class Mine(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(UnsupportedLayerError, match="subclassed"):
        graph_from_model(Mine(name="mine"))
    with pytest.raises(UnsupportedLayerError, match="not built"):
        graph_from_model(keras.Sequential([keras.layers.Dense(2)], name="lazy"))


def test_copy_model_falls_back_to_keras_for_what_the_reader_refuses():
    from deploykit.backend import keras
    from deploykit.core.graph import copy_model

    inputs = keras.Input(shape=(5,))
    shared = keras.layers.Dense(5, name="shared")
    model = keras.Model(inputs, shared(shared(inputs)))
    copy = copy_model(model)
    x = np.ones((2, 5), "float32")
    assert copy is not model and np.array_equal(copy(x).numpy(), model(x).numpy())
