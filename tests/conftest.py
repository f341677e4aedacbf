"""Shared fixtures: the embedded digits data, tiny tf_keras models built here, the CLI run in-process.

Models are built in fixtures (never loaded from the network); the trained one
is session-scoped so the suite trains it once.

``pytest -m "not slow"`` is the quick loop; ``pytest`` runs everything. A test is slow when it is
marked so, or when it needs a fixture of :data:`SLOW_FIXTURES` (directly or through another fixture):
those train a model or start a server process, whatever the test does with them.
"""

from __future__ import annotations

import gc
import os
import subprocess

import pytest
from hypothesis import settings

from tests.helpers import build_dense, randomize_batchnorm
from tests.schedule import costliest_first
from tests.slow_files import marked_slow, skips_slow
from tests.worker_cache import once_per_run

# Property tests draw the same examples on every run, so a failure repeats; HYPOTHESIS_PROFILE=explore
# draws fresh random examples (and keeps failures in .hypothesis/) to search for new bugs. No per-example
# deadline: a test asserts behaviour, not speed (speed lives in benchmarks/), and on a loaded machine or under
# pytest-xdist a 200 ms deadline failed tests whose every assertion held.
settings.register_profile("deterministic", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

SLOW_FIXTURES = {
    "trained_model": "trains a model for 30 epochs",
    "server": "starts a deploykit serve process",
}


#: Python's cyclic garbage collector thresholds in the test processes (the default is 700, 10, 10). TensorFlow's import
#: and every Keras model a test builds allocate hundreds of thousands of objects, so at the default a worker ran ~2,200
#: collections while collecting the quick loop, 12 of them full passes over TensorFlow's millions of objects: 1.7 of
#: its ~12.5 CPU s, and ~3 % of the tests' own CPU after. At 10,000 the same collection runs 177 passes (0.4 s), with
#: the same peak memory on the files measured; the tests' garbage is still collected, in bigger batches. The isolated
#: export workers are fresh interpreters (spawned), so they keep Python's default.
GC_THRESHOLDS = (10_000, 10, 10)


def pytest_configure(config):
    """Under pytest-xdist, files are handed out in the order :func:`pytest_collection_modifyitems` leaves them
    (the costliest first, :mod:`tests.schedule`) instead of by their number of tests; the garbage collector runs
    at :data:`GC_THRESHOLDS`."""
    gc.set_threshold(*GC_THRESHOLDS)
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_ignore_collect(collection_path, config):
    """Under ``-m "not slow"``, a file marked slow as a whole is not imported (:mod:`tests.slow_files`)."""
    if collection_path.suffix == ".py" and skips_slow(config.option.markexpr) and marked_slow(collection_path):
        return True
    return None


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items):
    """Mark the tests of :data:`SLOW_FIXTURES` slow before ``-m`` selects; once ``-m`` / ``-k`` have deselected,
    put the costliest files first (every selected test still runs, in its file's own order)."""
    for item in items:
        if SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    result = yield
    costliest_first(items)
    return result


@pytest.fixture(scope="session")
def digits():
    from deploykit.data.dataset import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_model(digits, tmp_path_factory):
    """A BN + dropout dense net trained briefly on digits (about 0.95 test accuracy); trained once per run, the
    other pytest-xdist workers load the saved file (the tests only read it)."""
    from deploykit.backend import keras, set_seed

    def train():
        model = build_dense(data=digits)
        model.compile(
            optimizer=keras.optimizers.Nadam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        model.fit(
            digits.x_train,
            digits.y_train,
            epochs=30,
            batch_size=32,
            verbose=0,
            validation_data=(digits.x_val, digits.y_val),
        )
        return model

    set_seed(0)  # in every worker, whether it trains or loads
    return once_per_run(
        tmp_path_factory,
        "trained_model-digits-dense-nadam1e-3-30epochs-seed0",
        train,
        save=lambda model, path: model.save(path),
        load=keras.models.load_model,
        suffix=".keras",
    )


@pytest.fixture(scope="session")
def random_bn_model():
    """``random_bn_model(seed, **build_dense_options)``: an untrained dense BN net, the same for the same
    arguments: weights drawn after ``set_seed(seed)``, BatchNorm statistics randomized with ``seed``
    (not the 0/1 defaults, so folding and export comparisons mean something)."""
    from deploykit.backend import set_seed

    def build(seed: int, **options):
        set_seed(seed)
        model = build_dense(**options)
        randomize_batchnorm(model, seed)
        return model

    return build


@pytest.fixture
def cli(capsys):
    """``cli("export", MODEL, ...)`` runs ``deploykit export MODEL ...`` in this process and returns what a
    subprocess would: a ``CompletedProcess`` with the exit code, stdout and stderr (usage errors and
    ``--help`` included). For tests of the process itself (start-up time, native stderr, signals),
    run ``python -m deploykit.cli.main`` instead."""
    from deploykit.cli.main import main

    def run(*args) -> subprocess.CompletedProcess:
        argv = [str(a) for a in args]
        capsys.readouterr()  # what the test printed before is not the command's
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["deploykit", *argv], code, out, err)

    return run
