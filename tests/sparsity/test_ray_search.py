"""The sparsity search's tries as Ray tasks on a real two-node Ray cluster on loopback: the same kept try as serially,
each try's note saying where it ran. Slow (starts Ray and two workers importing TensorFlow); skipped without Ray."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# One authentication mode for the head, the worker node and this driver: once a local ray.init() has left a token
# in ~/.ray, `ray start --head` turns token authentication on but `ray start --address` does not (Ray 2.60). Set
# before Ray is imported, which reads it once.
os.environ.setdefault("RAY_AUTH_MODE", "token")
ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "deploykit[ray]")')

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    """A head node and one worker node, one CPU each, on 127.0.0.1; stopped afterwards (``ray stop``)."""
    cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if cli is None:
        pytest.skip("the ray command is not installed")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]

    def start(*args):
        return subprocess.run([cli, "start", *args, *common], capture_output=True, text=True, timeout=300, check=False)

    try:
        for _ in range(3):  # Ray gives a node 30 s to register with its head: a loaded machine may need another go
            done = start("--head", "--port", str(port), "--include-dashboard", "false")
            done = start("--address", address) if done.returncode == 0 else done
            if done.returncode == 0 or "timed out during startup" not in done.stderr:
                break
            subprocess.run([cli, "stop", "--force"], check=False, capture_output=True, timeout=120)
        if done.returncode != 0:
            pytest.fail(f"ray start failed: {done.stderr.strip()[-1000:]}")
        yield address
    finally:
        ray.shutdown()
        subprocess.run([cli, "stop", "--force"], check=False, capture_output=True, timeout=120)


@pytest.fixture
def small_model(digits):
    from deploykit.backend import keras, set_seed

    set_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=20, batch_size=32, verbose=0)
    return model


def test_tries_on_a_two_node_cluster_keep_what_the_serial_search_keeps(cluster, small_model, digits):
    from deploykit.sparsity import PruneConfig, SearchConfig, search_sparsity

    # 99 % leaves a 64-unit layer about 40 weights: that try almost always misses, so the next one runs as a Ray task
    config, prune = (
        SearchConfig(targets=(0.99, 0.6), sensitivity=False, min_layer_weights=0),
        PruneConfig(epochs=3, distill=False),
    )
    _, serial = search_sparsity(small_model, digits, 0.03, config=config, prune_config=prune)
    model, remote = search_sparsity(small_model, digits, 0.03, config=config, prune_config=prune, ray=cluster)
    assert ray.is_initialized() and len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert (serial.kept and serial.kept.target) == (remote.kept and remote.kept.target)
    # the highest target runs first, in the driver, so the tries are the serial search's own: 0.99, and 0.6 only if
    # 0.99 missed, as a Ray task
    assert [t.target for t in remote.tries] == [t.target for t in serial.tries]
    assert [t.target for t in remote.tries] == ([0.99] if remote.tries[0].kept else [0.99, 0.6])
    nodes = {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}
    ran = [
        re.search(r"ran on node \S+ \((\w{8})\), pid (\d+), (in the driver|as a Ray task)", t.note)
        for t in remote.tries
    ]
    assert all(ran) and {m.group(1) for m in ran} <= nodes, [t.note for t in remote.tries]  # the report says where
    assert [m.group(3) for m in ran] == ["in the driver", "as a Ray task"][: len(ran)]
    assert int(ran[0].group(2)) == os.getpid()
    if len(ran) > 1:
        assert int(ran[1].group(2)) != os.getpid()
    if remote.kept is not None:  # the kept try's model came back from its task
        from deploykit.core.evaluate import accuracy

        assert accuracy(model, digits.x_val, digits.y_val) == pytest.approx(remote.kept.accuracy)  # validation
