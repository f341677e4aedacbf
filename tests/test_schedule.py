"""The suite's file order under pytest-xdist (tests/schedule.py): costliest first, each file's tests in order."""

from __future__ import annotations

from dataclasses import dataclass

from tests.schedule import costliest_first, file_costs, load_costs, write_costs


@dataclass
class Item:
    nodeid: str
    slow: bool = False

    def get_closest_marker(self, name):
        return object() if name == "slow" and self.slow else None


def test_files_go_costliest_first_and_keep_their_tests_order():
    items = [
        Item("tests/a.py::one"),
        Item("tests/a.py::two"),
        Item("tests/b.py::one", slow=True),
        Item("tests/c.py::one"),
        Item("tests/b.py::two"),
    ]
    costs = {"tests/a.py": {"fast": 5.0, "slow": 0.0}, "tests/b.py": {"fast": 1.0, "slow": 60.0}}
    costliest_first(items, costs)
    assert [i.nodeid for i in items] == [
        "tests/b.py::one",
        "tests/b.py::two",
        "tests/a.py::one",
        "tests/a.py::two",
        "tests/c.py::one",  # not in the table: one quick test guessed at 0.1 s
    ]


def test_only_the_selected_kinds_count():
    """Under ``-m "not slow"`` a file's slow half is not run, so it does not count."""
    costs = {"tests/b.py": {"fast": 1.0, "slow": 60.0}, "tests/a.py": {"fast": 5.0, "slow": 0.0}}
    quick = file_costs([Item("tests/b.py::one"), Item("tests/a.py::one")], costs)
    assert quick == {"tests/b.py": 1.0, "tests/a.py": 5.0}
    everything = file_costs([Item("tests/b.py::one"), Item("tests/b.py::two", slow=True)], costs)
    assert everything == {"tests/b.py": 61.0}


def test_the_table_round_trips(tmp_path):
    path = tmp_path / "costs.json"
    write_costs({"tests/a.py::x": 1.04, "tests/a.py::y": 2.0, "tests/b.py::z": 3.0}, {"tests/a.py::y": "slow"}, path)
    assert load_costs(path) == {"tests/a.py": {"fast": 1.0, "slow": 2.0}, "tests/b.py": {"fast": 3.0}}
    assert load_costs(tmp_path / "missing.json") == {}


def test_a_run_of_some_halves_updates_only_those(tmp_path):
    path = tmp_path / "costs.json"
    write_costs({"tests/a.py::x": 1.0, "tests/b.py::z": 3.0}, {}, path)  # the quick loop
    write_costs({"tests/a.py::y": 7.0}, {"tests/a.py::y": "slow"}, path)  # then a.py's slow tests alone
    assert load_costs(path) == {"tests/a.py": {"fast": 1.0, "slow": 7.0}, "tests/b.py": {"fast": 3.0}}
    write_costs({"tests/a.py::x": 0.5}, {}, path)  # a new measure of a half replaces it
    assert load_costs(path) == {"tests/a.py": {"fast": 0.5, "slow": 7.0}, "tests/b.py": {"fast": 3.0}}
