"""CPU seconds per test and per file: ``pytest -p tests.cpu_report [-n 2 --dist loadfile] ...``.

Why CPU and not ``--durations``: the suite's speed targets are for 2 idle cores, and the machines it is
measured on are shared, where wall times are inflated several times over by the load. A test's CPU seconds
(its process, and the child processes it waited for: the CLI, isolated export workers) barely move with the
load. Each worker measures its own tests and sends the figures to the controller inside the reports
(``user_properties``), so this works with and without pytest-xdist; the summary lists the costliest files (with
``--dist loadfile`` the longest file is the run's floor) and tests, and ``--cpu-report-json PATH`` writes
every test's figures. A session fixture's cost lands on the first test that asks for it, as it does in a run.
``--cpu-report-costs tests/file_costs.json`` updates the table :mod:`tests.schedule` orders the files by: the halves
(a file's quick tests, its slow ones) this run measured replace the table's, so ``-m slow`` on a few files fills
their slow halves without a run of the whole suite.
"""

from __future__ import annotations

import json
import resource
from collections import defaultdict

import pytest

_KEY = "cpu_seconds"


def pytest_addoption(parser):
    group = parser.getgroup("cpu_report")
    group.addoption("--cpu-report-top", type=int, default=15, help="files and tests listed (default 15)")
    group.addoption("--cpu-report-json", default=None, help="write every test's CPU seconds to this JSON file")
    group.addoption(
        "--cpu-report-costs",
        default=None,
        help="update the per-file cost table of tests.schedule in this JSON file with the halves this run measured",
    )


def _cpu_seconds() -> float:
    """User + system seconds of this process and of the children it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _measured(item):
    """Wrap one phase (setup, call, teardown): its CPU seconds go into the item's properties, which its report
    carries to the controller, whether the phase passed or raised."""
    start = _cpu_seconds()
    try:
        return (yield)
    finally:
        item.user_properties.append((_KEY, _cpu_seconds() - start))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _measured(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _measured(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    return (yield from _measured(item))


class _Totals:
    """The controller's tally: the last report of a test carries all of its phases."""

    def __init__(self):
        self.tests: dict[str, float] = {}
        self.kinds: dict[str, str] = {}  # nodeid -> "slow" / "fast"

    def pytest_runtest_logreport(self, report):
        seconds = [value for key, value in report.user_properties if key == _KEY]
        if seconds:
            self.tests[report.nodeid] = sum(seconds)
            self.kinds[report.nodeid] = "slow" if "slow" in report.keywords else "fast"


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    config.pluginmanager.register(_Totals(), "cpu_report_totals")


def pytest_terminal_summary(terminalreporter, config):
    totals = config.pluginmanager.get_plugin("cpu_report_totals")
    tests = totals.tests
    if not tests:
        return
    files: dict[str, float] = defaultdict(float)
    for nodeid, seconds in tests.items():
        files[nodeid.split("::")[0]] += seconds
    top, write = config.getoption("cpu_report_top"), terminalreporter.write_line
    terminalreporter.section("CPU seconds (process + waited children; worker start-up and collection not included)")
    write(f"{sum(tests.values()):.1f} s in {len(tests)} tests, {len(files)} files")
    for name, seconds in sorted(files.items(), key=lambda kv: -kv[1])[:top]:
        write(f"{seconds:8.1f}  {name}")
    write("slowest tests:")
    for nodeid, seconds in sorted(tests.items(), key=lambda kv: -kv[1])[:top]:
        write(f"{seconds:8.1f}  {nodeid}")
    path = config.getoption("cpu_report_json")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"tests": tests, "files": files}, f, indent=1, sort_keys=True)
    costs = config.getoption("cpu_report_costs")
    if costs:
        from pathlib import Path

        from tests.schedule import write_costs

        write_costs(tests, totals.kinds, Path(costs))
