"""Values that fail late or lose information (issue 26 item 9): refused at once, with the key or the problem named."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from deploykit.data.dataset import load_dataset
from deploykit.errors import ConfigError, DataError
from deploykit.pipeline.config import OptimizeConfig
from deploykit.serve import limits

BIG = 2**63 - 1


@pytest.mark.parametrize("table, key", [("input", "seed"), ("mc", "samples"), ("mc", "seed")])
def test_huge_integers_are_refused_at_config_with_the_key_named(table, key):
    with pytest.raises(ConfigError, match=rf"{table}\.{key}"):
        OptimizeConfig.from_toml_text(f"[{table}]\n{key} = {BIG}\n")


def test_seed_limit_still_takes_32_bit_seeds():
    assert OptimizeConfig.from_toml_text(f"[input]\nseed = {2**32 - 1}\n").input.seed == 2**32 - 1


def _npz(tmp_path, x, y=None):
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.arange(len(x)) % 2 if y is None else y)
    return path


def test_complex_inputs_are_refused_not_truncated(tmp_path):
    x = np.ones((40, 3)) + 1j
    with pytest.raises(DataError, match="real numbers, not complex"):
        load_dataset(_npz(tmp_path, x))


def test_values_too_large_for_float32_are_refused_without_numpy_warnings(tmp_path, capfd):
    x = np.ones((40, 3))
    x[0, 0] = 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy warning would print a source path
        with pytest.raises(DataError, match="1 NaN or inf values"):
            load_dataset(_npz(tmp_path, x))
    assert ".py:" not in capfd.readouterr().err


def test_v2_datatype_in_lower_case_is_refused():
    header = {"inputs": [{"name": "input", "datatype": "fp32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    with pytest.raises(limits.RequestError, match="datatype must be written as the protocol spells it"):
        limits.check_v2_header(header, 0)


def test_python_warnings_in_a_command_are_one_line_without_a_source_path():
    from deploykit.log import cli_logging

    with cli_logging():
        line = warnings.formatwarning("overflow encountered in cast\nsecond", RuntimeWarning, "/some/where/data.py", 12)
    assert line == "warning: RuntimeWarning: overflow encountered in cast second\n"
    assert "/some/where" in warnings.formatwarning("x", RuntimeWarning, "/some/where/data.py", 12)  # restored after
