"""``--ray`` beyond the search: an ensemble's members and the int8 fallbacks as Ray tasks, decided as serially
(the same seeds, the same order, the same accept rule), each saying where it ran. Slow (a local Ray, whose workers
import TensorFlow); skipped without Ray."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Ray reads its authentication mode once, when imported: the same mode as tests/sparsity/test_ray_search.py's
# cluster (set there too), whichever module is collected first
os.environ.setdefault("RAY_AUTH_MODE", "token")
ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "deploykit[ray]")')

pytestmark = pytest.mark.slow


@pytest.fixture
def local_ray():
    """A Ray started on this machine for the test (``"local"``), shut down afterwards."""
    from deploykit.sparsity.ray_search import LOCAL, connect

    ray.shutdown()
    connect(LOCAL)
    yield LOCAL
    ray.shutdown()


def _outputs(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_ensemble_members_on_ray_are_the_serial_members(tmp_path, digits, local_ray):
    from deploykit.io.models import load_model
    from deploykit.pipeline import optimize
    from deploykit.pipeline.ensemble import optimize_members
    from tests.pipeline.test_optimize_ensemble import _member

    models = [load_model(_member(tmp_path / f"m{k}.keras", digits, seed=k)) for k in range(2)]
    options = {"sparsity": 0.5, "epochs": 1, "keep_keras": True}
    serial, _ = optimize_members(optimize, models, digits, tmp_path / "serial", **options)
    lines: list[str] = []
    remote, original = optimize_members(
        optimize, models, digits, tmp_path / "ray", lines.append, ray=local_ray, **options
    )
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(
        p.name for p in (tmp_path / "serial").iterdir()
    )
    assert original.exists() and all(p.with_suffix(".keras").exists() for p in remote)
    for a, b in zip(serial, remote):  # the same member: pruned with the same seed, int8 from the same weights
        np.testing.assert_allclose(_outputs(a, digits.x_test), _outputs(b, digits.x_test), atol=1e-5)
    assert [line.split(" ran on node")[0] for line in lines if " ran on node " in line] == ["member 1/2", "member 2/2"]
    assert not any("deploykit-member-" in line for line in lines)  # no temporary path said


def test_int8_fallbacks_on_ray_are_the_serial_tries(tmp_path, local_ray):
    """The tutorial's breast_cancer model: its Normalization folded into the first Dense puts kernel rows ~10^6
    apart, so int8-static as configured misses and the fallbacks run (as Ray tasks here)."""
    from deploykit.pipeline import OptimizeConfig, optimize
    from deploykit.pipeline.records import Stage
    from deploykit.pipeline.tables import ValidateStep
    from tests.pipeline.test_optimize_binary import _breast_cancer, _keras3_tutorial_model

    data, x, y = _breast_cancer(tmp_path)
    _keras3_tutorial_model(x, y, tmp_path / "bc.keras")
    config = OptimizeConfig(validate=ValidateStep(latency_repeats=2))
    options = {"sparsity": "none", "formats": "onnx", "quantize": "int8-static", "mc": False, "config": config}
    serial = optimize(str(tmp_path / "bc.keras"), str(data), out_dir=tmp_path / "serial", **options)
    remote = optimize(str(tmp_path / "bc.keras"), str(data), out_dir=tmp_path / "ray", ray=local_ray, **options)

    def tries(result):
        return [(t.setting, t.kept, t.accuracy) for t in result.tries if t.stage is Stage.INT8]

    assert len(tries(serial)) > 1, "int8-static as configured met the budget: no fallback ran"
    assert tries(remote) == tries(serial)
    fallbacks = [t for t in remote.tries if t.stage is Stage.INT8][1:]
    assert all("ran on node " in t.note for t in fallbacks), [t.note for t in fallbacks]
    assert sorted(p.name for p in (tmp_path / "ray").glob("*.onnx")) == sorted(
        p.name for p in (tmp_path / "serial").glob("*.onnx")
    )
