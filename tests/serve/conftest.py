"""Exported models in a served folder, and a ``deploykit serve`` subprocess per test module."""

from __future__ import annotations

import pytest

from tests.serve.support import serving

MC_SEED = 11


@pytest.fixture(scope="session")
def serve_keras_model(digits, random_bn_model):
    """Normalization -> [Dense(elu) -> BN -> Dropout(0.2)] x 2 -> Dense(10, softmax), BN statistics randomized."""
    return random_bn_model(5, data=digits)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory, serve_keras_model, digits):
    """``digits.onnx`` (deterministic), ``digits_mc.onnx`` (MC, seeded; only the seeded comparison calls it) and a
    Triton-style ``mc_triton/1/model.onnx`` (MC with the raw samples, unseeded), written by the real exporters."""
    from deploykit import export_mc_onnx
    from deploykit.export import export_onnx, write_triton_repository
    from deploykit.export.metadata import ModelMetadata

    repo = tmp_path_factory.mktemp("served")
    names = list(digits.class_names)
    export_onnx(serve_keras_model, repo / "digits.onnx", metadata=ModelMetadata(class_names=names))
    export_mc_onnx(serve_keras_model, repo / "digits_mc.onnx", samples=30, seed=MC_SEED, class_names=names)
    staging = tmp_path_factory.mktemp("staging") / "mc_triton.onnx"
    # opset 14: `samples` stays an (initializer-backed) input, so per-request samples reach this model too; at 15+
    # the repository's copy fixes the exported default, as Triton serves it (test_serve_units checks that case)
    export_mc_onnx(serve_keras_model, staging, samples=30, include_samples=True, class_names=names, opset=14)
    write_triton_repository(staging, repo)
    return repo


@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    """``deploykit serve`` on the folder with default options; it must stop cleanly (exit 0) on SIGTERM."""
    with serving(model_repo, tmp_path_factory.mktemp("log") / "server.log") as process:
        yield process
