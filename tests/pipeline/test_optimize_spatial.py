"""A model whose one output is an image (keras.io's denoising autoencoder, [N, 8, 8, 1]) through ``deploykit export``,
``validate`` and ``optimize``, end to end.

Inside, every step sees a 64-target regressor (tests/core/test_multi_io_spatial.py); outside, each artifact gives
the image back: its one output is named after the model's output layer, [N, 8, 8, 1], and run in onnxruntime and
LiteRT it matches the Keras 3 model on the same rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.multi_models import denoising_autoencoder, denoising_npz, noisy_digits

pytestmark = pytest.mark.slow  # each test trains the autoencoder, then runs export or optimize


def _onnx_outputs(path, x) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))


def _tflite_outputs(path, x) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (name,) = next(iter(interpreter.get_signature_list().values()))["inputs"]
    return interpreter.get_signature_runner()(**{name: x})


def _output_name(model) -> str:
    return model.outputs[0]._keras_history[0].name


@pytest.fixture
def saved(tmp_path):
    model = denoising_autoencoder(epochs=2)
    model.save(tmp_path / "ae.keras")
    denoising_npz(tmp_path / "ae.npz")
    return model, tmp_path / "ae.keras", tmp_path / "ae.npz"


def test_export_gives_the_image_back_in_onnxruntime_and_litert_and_validate_passes(saved, cli):
    model, path, npz = saved
    out = path.parent / "exported"
    done = cli("export", path, "--data", npz, "--out", out, "--quantize", "float32,int8-static,int8-full")
    assert done.returncode == 0, done.stderr
    noisy, _ = noisy_digits()
    want = np.asarray(model(noisy[:50]))
    for file, run in (("model.onnx", _onnx_outputs), ("model.tflite", _tflite_outputs)):
        got = run(out / file, noisy[:50])
        assert list(got) == [_output_name(model)], file  # the model's own output, as several outputs are named
        assert got[_output_name(model)].shape == (50, 8, 8, 1)
        np.testing.assert_allclose(got[_output_name(model)], want, atol=1e-4, err_msg=file)
    for file in ("model_int8-static.onnx", "model_int8-full.tflite"):
        assert (out / file).exists(), file
    summary = json.loads((out / "validation.json").read_text())
    assert not summary["rejected"] and len(summary["artifacts"]) == 4, summary["rejected"]
    assert all(not a["validation"]["mismatches"] for a in summary["artifacts"]), summary["table"]
    for file in ("model.onnx", "model.tflite"):
        checked = cli("validate", out / file, "--data", npz, "--reference", path)
        assert checked.returncode == 0 and "| ok |" in checked.stdout, checked.stdout + checked.stderr


def test_optimize_ships_the_autoencoder_and_its_files_give_the_image_back(saved, cli):
    import keras

    model, path, npz = saved
    out = path.parent / "out"
    done = cli("optimize", path, "--data", npz, "--out", out)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    verdicts = {a["file"]: a["verdict"] for a in report["artifacts"]}
    assert verdicts["model.onnx"] == "pass" and verdicts["model.tflite"] == "pass", verdicts
    shipped = keras.saving.load_model(out / "model.keras")  # Keras 3 in, Keras 3 out, with its image output
    assert shipped.output_shape == (None, 8, 8, 1) and _output_name(shipped) == _output_name(model)
    noisy, _ = noisy_digits()
    want = np.asarray(shipped(noisy[:50]))
    for file, run in (("model.onnx", _onnx_outputs), ("model.tflite", _tflite_outputs)):
        (got,) = run(out / file, noisy[:50]).values()
        assert got.shape == (50, 8, 8, 1), file
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=file)


def test_mc_dropout_of_the_autoencoder_gives_its_pixels_as_columns(tmp_path):
    import onnx

    from deploykit.core.contract import OUTPUT_COLUMNS_KEY
    from deploykit.pipeline import Status, optimize

    model = denoising_autoencoder(epochs=2, dropout=0.2)
    denoising_npz(tmp_path / "ae.npz")
    result = optimize(
        model,
        str(tmp_path / "ae.npz"),
        out_dir=tmp_path / "out",
        formats="onnx",
        quantize="float32",
        sparsity="none",
        mc_seed=3,
    )
    steps = {s.step: s for s in result.steps}
    assert result.failure is None and steps["mc dropout"].status is Status.DONE, steps["mc dropout"]
    path = result.out_dir / "model_mc.onnx"
    noisy = noisy_digits()[0][:40]
    got = _onnx_outputs(path, noisy)
    assert got["mean"].shape == (40, 64) and got["std"].shape == (40, 64)
    want = np.asarray(model(noisy)).reshape(40, 64)  # the MC mean follows the deterministic image
    assert np.corrcoef(got["mean"].ravel(), want.ravel())[0, 1] > 0.9
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(metadata[OUTPUT_COLUMNS_KEY]) == {_output_name(model): [0, 64]}


def test_optimize_ships_the_keras_io_segmentation_unet_as_per_pixel_probabilities(tmp_path, cli):
    """keras.io's U-Net (a softmax per pixel), trained on masks of class ids as the tutorial does: it was refused
    ("a per-position classifier is not supported"); now its files give [N, 16, 16, 3] probabilities, equal to
    the saved model's, each pixel's summing to 1, and the mask read as one-hot targets is said."""
    from tests.multi_models import segmentation_unet

    model, x, mask = segmentation_unet()
    model.save(tmp_path / "unet.keras")
    np.savez(tmp_path / "unet.npz", x=x, y=mask)
    out = tmp_path / "out"
    done = cli(
        "optimize", tmp_path / "unet.keras", "--data", tmp_path / "unet.npz", "--out", out,
        "--no-sparsity", "--formats", "onnx", "--quantize", "float32", "--no-mc",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert "ends in a softmax per position: shipped as its class probabilities" in said
    assert "holds class ids of output" in said and "read as one-hot rows of its 3 classes" in said
    report = json.loads((out / "report.json").read_text())
    assert {a["file"]: a["verdict"] for a in report["artifacts"]}["model.onnx"] == "pass"
    import keras

    want = np.asarray(keras.saving.load_model(out / "model.keras")(x[:16]))
    (got,) = _onnx_outputs(out / "model.onnx", x[:16]).values()
    assert got.shape == (16, 16, 16, 3) and np.abs(got - want).max() < 1e-4
    assert np.allclose(got.sum(-1), 1.0, atol=1e-4)
    assert np.mean(got.argmax(-1) == np.asarray(model(x[:16])).argmax(-1)) >= 0.999  # no step left: the user's
