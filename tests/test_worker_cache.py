"""tests.worker_cache: a fixture computed once for all pytest-xdist workers of a run, loaded by the others."""

from __future__ import annotations

import json
import threading

import pytest

from tests.worker_cache import once_per_run, run_root


class _Factory:
    """What once_per_run reads of pytest's tmp_path_factory: the worker's own base folder."""

    def __init__(self, base):
        self.base = base

    def getbasetemp(self):
        return self.base


def _json_cache(factory, key, compute):
    return once_per_run(
        factory,
        key,
        compute,
        save=lambda value, path: path.write_text(json.dumps(value)),
        load=lambda path: json.loads(path.read_text()),
        suffix=".json",
    )


def test_the_first_worker_computes_and_the_others_load(tmp_path, monkeypatch):
    pytest.importorskip("fcntl")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    calls = []

    def compute():
        calls.append(1)
        return {"weights": [1.5, 2.5]}

    workers = [_Factory(tmp_path / f"popen-gw{i}") for i in range(2)]
    assert run_root(workers[0]) == run_root(workers[1]) == tmp_path  # the run's root, shared
    results = [_json_cache(w, "model-a", compute) for w in workers]
    assert results == [{"weights": [1.5, 2.5]}] * 2 and len(calls) == 1
    assert _json_cache(workers[1], "model-b", compute) == {"weights": [1.5, 2.5]} and len(calls) == 2  # another key


def test_workers_asking_at_once_wait_for_the_one_computing(tmp_path, monkeypatch):
    pytest.importorskip("fcntl")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    calls, started, results = [], threading.Event(), []

    def compute():
        calls.append(1)
        started.set()
        threading.Event().wait(0.2)  # the other worker asks meanwhile
        return [len(calls)]

    def worker(i):
        results.append(_json_cache(_Factory(tmp_path / f"popen-gw{i}"), "slow", compute))

    first = threading.Thread(target=worker, args=(0,))
    first.start()
    started.wait(5)
    worker(1)
    first.join(5)
    assert results == [[1], [1]] and len(calls) == 1


def test_without_xdist_the_process_computes_in_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert run_root(_Factory(tmp_path)) == tmp_path
    assert _json_cache(_Factory(tmp_path), "k", lambda: 3) == 3
