"""Hostile model files (issue 13 items 1, 2, 6): nothing in them runs, one clear error, exit 1 through the CLI."""

from __future__ import annotations

import pytest

from deploykit.cli.main import main
from deploykit.errors import ModelLoadError, UnsafeModelError
from deploykit.io.models import load_model
from tests.security import hostile


def _error_lines(err: str) -> list[str]:
    """The lines of a CLI's stderr that are not progress lines (``[  0.4s] ...``)."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("[")]


def _cli_refuses(capfd, argv: list[str], *needles: str) -> str:
    """Run the CLI in-process; assert exit 1 and exactly one error line holding every needle (native stderr
    included)."""
    code = main(argv)
    err = _error_lines(capfd.readouterr().err)
    assert code == 1, err
    assert len(err) == 1 and err[0].startswith(f"deploykit {argv[0]}: error: "), err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "marker.txt"


def test_saved_model_initializer_never_runs(tmp_path, marker, capfd):
    path = hostile.saved_model_with_initializer(tmp_path, marker)
    with pytest.raises(UnsafeModelError, match=r"SavedModel folder holds traced TensorFlow graphs.*--unsafe"):
        load_model(path)
    assert not marker.exists()
    _cli_refuses(capfd, ["fold", str(path), "--out", str(tmp_path / "f.keras")], str(path), "--unsafe")
    assert not marker.exists() and not (tmp_path / "f.keras").exists()


def test_saved_model_with_a_class_named_dense(tmp_path, marker, capfd):
    path = hostile.saved_model_with_fake_dense(tmp_path, marker)
    out = tmp_path / "out"
    _cli_refuses(capfd, ["export", str(path), "--out", str(out), "--format", "onnx"], "--unsafe")
    assert not marker.exists() and not out.exists()
    # Trusted (--unsafe), the revived look-alike is still known for what it is: custom code, not Keras' Dense,
    # so no step treats it as a Dense layer (fold, pruning and compact skip it; only the converters run it).
    from deploykit.core.layers import Role, layer_type, support_for

    fake = load_model(path, unsafe=True).get_layer("dense")
    assert layer_type(fake) != "Dense" and layer_type(fake).endswith(".Dense")
    assert support_for(fake, unsafe=True).role is Role.OPAQUE
    with pytest.raises(UnsafeModelError, match="'dense' of type .*Dense is custom code"):
        support_for(fake)


def test_a_layer_is_identified_by_its_real_class_not_its_name():
    from deploykit.backend import keras
    from deploykit.core.layers import check_layers, layer_type

    class Dense(keras.layers.Layer):
        pass

    assert layer_type(keras.layers.Dense(2)) == "Dense"
    assert layer_type(Dense()) != "Dense" and layer_type(Dense()).endswith(".Dense")
    with pytest.raises(UnsafeModelError, match="'fake' of type .*test_hostile_models.*Dense is custom code"):
        check_layers([keras.layers.Dense(2), Dense(name="fake")])


def test_hdf5_zip_polyglot_is_refused_before_either_is_read(tmp_path, capfd, caplog):
    path = hostile.h5_zip_polyglot(tmp_path)
    with pytest.raises(ModelLoadError, match="both an HDF5 file and a zip archive"):
        load_model(path, unsafe=True)
    _cli_refuses(capfd, ["fold", str(path), "--unsafe", "--out", str(tmp_path / "f.keras")], str(path), "polyglot")
    assert "Placeholder" not in caplog.text + capfd.readouterr().err  # logging.warning(<symbolic input>) never ran


def test_suffix_must_agree_with_the_content(tmp_path):
    from deploykit.backend import keras
    from deploykit.io.models import save_model

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    save_model(model, tmp_path / "m.h5")
    save_model(model, tmp_path / "m.keras")
    (tmp_path / "h5_named.keras").write_bytes((tmp_path / "m.h5").read_bytes())
    (tmp_path / "zip_named.h5").write_bytes((tmp_path / "m.keras").read_bytes())
    (tmp_path / "h5_named.bin").write_bytes((tmp_path / "m.h5").read_bytes())
    with pytest.raises(
        ModelLoadError, match=r"content is a h5 file but the suffix \.keras says keras; rename it with \.h5"
    ):
        load_model(tmp_path / "h5_named.keras")
    with pytest.raises(
        ModelLoadError, match=r"content is a keras file but the suffix \.h5 says h5; rename it with \.keras"
    ):
        load_model(tmp_path / "zip_named.h5")
    with pytest.raises(ModelLoadError, match=r"suffix \.bin is not a model's"):
        load_model(tmp_path / "h5_named.bin")


def test_keras_zip_bomb_is_refused_before_inflating(tmp_path, capfd):
    path = hostile.keras_zip_bomb(tmp_path, inflated=64 << 20)  # over the 16 MiB config limit
    line = _cli_refuses(
        capfd,
        ["fold", str(path), "--out", str(tmp_path / "f.keras")],
        str(path),
        "config.json declares 64.0 MiB",
        "DEPLOYKIT_MAX_CONFIG_BYTES",
    )
    assert "refused before reading it" in line


@pytest.mark.slow
def test_keras_zip_bomb_of_one_gib(tmp_path, capfd):
    """The attack's own size: a config.json inflating to 1 GiB (building it deflates 1 GiB: seconds)."""
    path = hostile.keras_zip_bomb(tmp_path, inflated=1 << 30)
    assert path.stat().st_size < 8 << 20
    _cli_refuses(capfd, ["fold", str(path), "--out", str(tmp_path / "f.keras")], "declares 1,024.0 MiB")


def test_declared_weights_are_limited(tmp_path):
    """A config declaring a huge Dense layer would allocate its kernel at build time."""
    import json
    import zipfile

    config = {
        "class_name": "Sequential",
        "config": {
            "name": "s",
            "layers": [
                {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 100_000], "name": "in"}},
                {"class_name": "Dense", "config": {"name": "huge", "units": 100_000}},
            ],
        },
    }
    path = tmp_path / "huge.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("metadata.json", json.dumps({"keras_version": "2.21.0"}))
    with pytest.raises(ModelLoadError, match="the layer config declares 38,147.4 MiB.*DEPLOYKIT_MAX_MODEL_BYTES"):
        load_model(path)


def test_keras_weights_inflating_past_the_limit(tmp_path, monkeypatch):
    """The archive's members are summed as declared (a model.weights.h5 inflating to gigabytes)."""
    import zipfile

    from deploykit.backend import keras
    from deploykit.io.models import save_model

    save_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), tmp_path / "m.keras")
    with (
        zipfile.ZipFile(tmp_path / "m.keras") as src,
        zipfile.ZipFile(tmp_path / "big.keras", "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data + bytes(4 << 20) if info.filename == "model.weights.h5" else data)
    assert load_model(tmp_path / "m.keras") is not None
    monkeypatch.setenv("DEPLOYKIT_MAX_MODEL_BYTES", str(2 << 20))
    with pytest.raises(
        ModelLoadError, match=r"the Keras archive \(uncompressed\) declares 4\.0 MiB, over the 2\.0 MiB limit"
    ):
        load_model(tmp_path / "big.keras")


def test_an_hdf5_tail_that_only_looks_like_a_zip_end_still_loads(tmp_path):
    """4 bytes of weights can spell the zip end signature; only a readable zip directory makes a polyglot."""
    import zipfile

    from deploykit.backend import keras
    from deploykit.io.models import save_model

    save_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), tmp_path / "m.h5")
    (tmp_path / "tail.h5").write_bytes((tmp_path / "m.h5").read_bytes() + b"PK\x05\x06" + bytes(18))
    assert zipfile.is_zipfile(tmp_path / "tail.h5")
    assert load_model(tmp_path / "tail.h5").output_shape == (None, 2)


def _nested_keras3_file(path, depth: int) -> None:
    """A Keras 3 .keras file whose config nests ``depth`` Sequential models (written as text: json.dumps itself
    cannot write thousands of levels)."""
    import json
    import zipfile

    level = (
        '{"module":"keras","class_name":"Sequential","config":{"name":"s%d","build_input_shape":[null,4],'
        '"layers":[{"module":"keras.layers","class_name":"InputLayer","config":{"batch_shape":[null,4],'
        '"name":"s%d_in"}},'
    )
    dense = '{"module":"keras.layers","class_name":"Dense","config":{"name":"d","units":2}}'
    config = "".join(level % (i, i) for i in range(depth)) + dense + "]}}" * depth
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.10.0"}))
        zf.writestr("config.json", config)
        zf.writestr("model.weights.h5", b"")


@pytest.mark.parametrize("depth", [240, 5000])
def test_models_nested_absurdly_deep_are_one_error_before_any_recursion(tmp_path, depth):
    """Nested models are flattened recursively (deploykit.core.nested): 240 levels ended in a RecursionError from
    a copy of the config, 5000 in one from the JSON reader; each is now one line naming it, nothing loaded."""
    from deploykit.errors import ModelLoadError, UnsupportedLayerError
    from deploykit.io.models import load_model

    _nested_keras3_file(tmp_path / "deep.keras", depth)
    expected = (
        (UnsupportedLayerError, "nested 239 levels deep; deploykit reads up to 16")
        if depth == 240
        else (ModelLoadError, "config.json nests deeper than Python's JSON reader goes")
    )
    with pytest.raises(expected[0], match=expected[1]):
        load_model(tmp_path / "deep.keras")
