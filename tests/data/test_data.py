"""deploykit.data.dataset: every data format, the split, and every bad input."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from deploykit.data.dataset import SplitConfig, load_dataset, read_idx
from deploykit.errors import ConfigError, DataError


def _xy(n_per_class=20, classes=3, features=5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.normal(size=(len(y), features)) + y[:, None]
    return x.astype(np.float32), y


def _write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.uint8) % 3
    return rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8), labels


def _all_rows(d):
    return len(d.x_train) + len(d.x_val) + len(d.x_test)


# ---------------------------------------------------------------- formats


def test_digits_is_the_embedded_default():
    d = load_dataset()
    assert d.name == "digits" and d.input_shape == (64,) and d.num_classes == 10
    assert _all_rows(d) == 1797
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.x_train.max() == 16.0  # raw inputs: the model standardizes them itself
    # stratified: every split holds every class in about the same proportion
    for y in (d.y_train, d.y_val, d.y_test):
        share = np.bincount(y, minlength=10) / len(y)
        assert np.all(np.abs(share - 0.1) < 0.02)


def test_split_is_reproducible_with_a_seed():
    a = load_dataset("digits", split=SplitConfig(seed=7))
    b = load_dataset("digits", split=SplitConfig(seed=7))
    c = load_dataset("digits", split=SplitConfig(seed=8))
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_standardization_stats_come_from_train_only():
    d = load_dataset("digits")
    x = d.x_train.astype(np.float64)
    np.testing.assert_allclose(d.feature_mean, x.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d.feature_var, x.var(axis=0), rtol=1e-6, atol=1e-6)
    everything = np.concatenate([d.x_train, d.x_val, d.x_test])
    assert not np.allclose(d.feature_mean, everything.mean(axis=0), atol=1e-4)


def test_split_fractions(tmp_path):
    x, y = _xy(n_per_class=100, classes=2)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_dataset(tmp_path / "d.npz", split=SplitConfig(val_fraction=0.2, test_fraction=0.1))
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (140, 40, 20)


def test_npz_with_x_and_y(tmp_path):
    x, y = _xy()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_dataset(tmp_path / "d.npz")
    assert d.name == "d.npz" and d.input_shape == (5,) and d.class_names == ("0", "1", "2")
    assert _all_rows(d) == 60
    # every row survives the split unchanged
    got = np.concatenate([d.x_train, d.x_val, d.x_test])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, x.tolist()))


def test_npz_with_a_fixed_test_part(tmp_path):
    x, y = _xy(seed=1)
    xt, yt = _xy(n_per_class=5, seed=2)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    d = load_dataset(tmp_path / "d.npz")
    assert np.array_equal(d.x_test, xt) and np.array_equal(d.y_test, yt)
    assert len(d.x_train) + len(d.x_val) == 60 and len(d.x_val) > 0
    np.testing.assert_allclose(d.feature_mean, d.x_train.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_npz_with_fixed_validation_and_test_parts(tmp_path):
    x, y = _xy(seed=1)
    xv, yv = _xy(n_per_class=4, seed=3)
    xt, yt = _xy(n_per_class=5, seed=2)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_val=xv, y_val=yv, x_test=xt, y_test=yt)
    d = load_dataset(tmp_path / "d.npz")
    assert np.array_equal(d.x_train, x) and np.array_equal(d.x_val, xv) and np.array_equal(d.y_val, yv)


def test_csv_with_a_named_label_column_and_string_labels(tmp_path):
    x, y = _xy(classes=3)
    names = np.array(["zebra", "ant", "moth"])[y]
    lines = ["f1,species,f2,f3,f4,f5"]
    for row, label in zip(x, names):
        lines.append(f"{row[0]},{label},{row[1]},{row[2]},{row[3]},{row[4]}")
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    d = load_dataset(tmp_path / "d.csv", label_column="species")
    assert d.class_names == ("ant", "moth", "zebra") and d.input_shape == (5,)
    # the label column is not a feature, and names map to the right rows
    row = d.x_train[0]
    i = int(np.argmin(np.abs(x - row).sum(axis=1)))
    np.testing.assert_allclose(x[i], row, rtol=1e-6)
    assert d.class_names[d.y_train[0]] == names[i]


def test_csv_numeric_labels_keep_numeric_order(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["a,b,label"] + [f"{rng.normal()},{rng.normal()},{k % 11}" for k in range(110)]
    (tmp_path / "d.csv").write_text("\n".join(lines))
    d = load_dataset(tmp_path / "d.csv")
    assert d.class_names == tuple(str(i) for i in range(11))  # "10" after "9", ids are the labels


def test_labels_with_gaps_are_renumbered_and_named(tmp_path):
    x, y = _xy(classes=3)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 5, 9])[y])
    d = load_dataset(tmp_path / "d.npz")
    assert d.class_names == ("1", "5", "9") and d.num_classes == 3 and set(d.y_train) == {0, 1, 2}


@pytest.mark.parametrize("gz", [False, True])
def test_idx_images_file(tmp_path, gz):
    images, labels = _images(60)
    sfx = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", images, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", labels, gz)
    d = load_dataset(tmp_path / f"train-images-idx3-ubyte{sfx}")
    assert d.input_shape == (4, 4) and d.num_classes == 3 and _all_rows(d) == 60
    got = np.concatenate([d.x_train, d.x_val, d.x_test])
    assert sorted(got.reshape(60, -1).sum(axis=1).tolist()) == sorted(
        images.reshape(60, -1).sum(axis=1).astype(float).tolist()
    )


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_with_train_and_test_files(tmp_path, gz):
    sfx = ".gz" if gz else ""
    images, labels = _images(60, seed=1)
    test_images, test_labels = _images(15, seed=2)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", images, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", labels, gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", test_images, gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", test_labels, gz)
    d = load_dataset(tmp_path)
    assert np.array_equal(d.x_test, test_images.astype(np.float32)) and np.array_equal(d.y_test, test_labels)
    assert len(d.x_train) + len(d.x_val) == 60


def test_idx_folder_with_train_files_only(tmp_path):
    images, labels = _images(60)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)  # labels not gzipped: still found
    assert _all_rows(load_dataset(tmp_path)) == 60


@settings(max_examples=15, deadline=None)
@given(
    hnp.arrays(
        np.dtype(">f4"), hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), elements=st.floats(-1e3, 1e3, width=32)
    )
)
def test_read_idx_round_trips(tmp_path_factory, array):
    path = tmp_path_factory.mktemp("idx") / "a-idx"
    _write_idx(path, array)
    assert np.array_equal(read_idx(path), array)


def test_sample_train_and_input_shape_check():
    d = load_dataset("digits")
    s = d.sample_train(50)
    assert s.shape == (50, 64) and np.array_equal(s, d.sample_train(50))
    d.check_input_shape((None, 64))
    with pytest.raises(DataError, match=r"\(64,\).*\(784,\)"):
        d.check_input_shape((None, 784))


def test_split_config_validates_and_round_trips():
    cfg = SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=3)
    assert SplitConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (
        {"val_fraction": 0},
        {"test_fraction": 1.5},
        {"val_fraction": 0.5, "test_fraction": 0.45},
        {"seed": "x"},
        {"sed": 1},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))[:3]):
            SplitConfig.from_dict(bad)


# ---------------------------------------------------------------- bad inputs


def _bad_inputs(tmp_path):
    x, y = _xy()
    cases = {}
    (tmp_path / "notes.txt").write_text("hello")
    cases["unknown format"] = (tmp_path / "notes.txt", {}, "unknown format")
    np.savez(tmp_path / "mismatch.npz", x=x, y=y[:-1])
    cases["x/y lengths"] = (tmp_path / "mismatch.npz", {}, "60 rows but y has 59")
    x_nan = x.copy()
    x_nan[3, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x_nan, y=y)
    cases["NaN"] = (tmp_path / "nan.npz", {}, "NaN or inf")
    x_inf = x.copy()
    x_inf[0, 0] = np.inf
    np.savez(tmp_path / "inf.npz", x=x_inf, y=y)
    cases["inf"] = (tmp_path / "inf.npz", {}, "NaN or inf")
    (tmp_path / "nan.csv").write_text("a,label\n1,0\nnan,1\n2,1\n")
    cases["NaN in CSV"] = (tmp_path / "nan.csv", {}, "NaN or inf")
    (tmp_path / "nolabel.csv").write_text("a,b\n1,2\n3,4\n")
    cases["missing label column"] = (tmp_path / "nolabel.csv", {}, "no label column 'label'")
    np.savez(tmp_path / "one.npz", x=x, y=np.zeros(len(x)))
    cases["one class"] = (tmp_path / "one.npz", {}, "fewer than two classes")
    np.savez(tmp_path / "keys.npz", a=x)
    cases["wrong keys"] = (tmp_path / "keys.npz", {}, "must hold arrays x and y")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    cases["broken npz"] = (tmp_path / "broken.npz", {}, "not a readable .npz")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00garbage\x80")
    cases["binary csv"] = (tmp_path / "binary.csv", {}, "not a readable CSV")
    (tmp_path / "text.csv").write_text("a,label\nx,1\ny,2\n")
    cases["text feature"] = (tmp_path / "text.csv", {}, "non-numeric feature")
    images, labels = _images(30)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "magic-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
    _write_idx(bad / "magic-labels-idx1-ubyte", labels)
    cases["IDX bad magic"] = (bad / "magic-images-idx3-ubyte", {}, "bad magic")
    _write_idx(bad / "short-images-idx3-ubyte", images)
    (bad / "short-images-idx3-ubyte").write_bytes((bad / "short-images-idx3-ubyte").read_bytes()[:-7])
    _write_idx(bad / "short-labels-idx1-ubyte", labels)
    cases["IDX truncated"] = (bad / "short-images-idx3-ubyte", {}, "promises")
    _write_idx(bad / "gz-images-idx3-ubyte.gz", images, gz=True)
    (bad / "gz-images-idx3-ubyte.gz").write_bytes((bad / "gz-images-idx3-ubyte.gz").read_bytes()[:40])
    _write_idx(bad / "gz-labels-idx1-ubyte.gz", labels, gz=True)
    cases["IDX truncated gzip"] = (bad / "gz-images-idx3-ubyte.gz", {}, "cannot read IDX")
    _write_idx(bad / "lonely-images-idx3-ubyte", images)
    cases["IDX without labels"] = (bad / "lonely-images-idx3-ubyte", {}, "no labels file")
    _write_idx(bad / "wrong-images-idx3-ubyte", images)
    _write_idx(bad / "wrong-labels-idx1-ubyte", labels[:10])
    cases["IDX count mismatch"] = (bad / "wrong-images-idx3-ubyte", {}, "30 rows but y has 10")
    (tmp_path / "empty").mkdir()
    cases["empty folder"] = (tmp_path / "empty", {}, "must hold IDX files")
    cases["missing file"] = (tmp_path / "nowhere.npz", {}, "no such file")
    return cases


def test_every_bad_input_is_one_clear_data_error(tmp_path):
    for what, (path, kwargs, message) in _bad_inputs(tmp_path).items():
        before = sorted(p.name for p in tmp_path.rglob("*"))
        with pytest.raises(DataError) as info:
            load_dataset(path, **kwargs)
        text = str(info.value)
        assert str(path) in text, f"{what}: the error does not name the file: {text}"
        assert message in text, f"{what}: {text}"
        assert "\n" not in text, what
        assert sorted(p.name for p in tmp_path.rglob("*")) == before, f"{what}: loading wrote something"


# ---------------------------------------------------------------- class names and regression targets


def _csv(path, x, labels, column="label"):
    lines = [",".join([f"f{j}" for j in range(x.shape[1])] + [column])]
    lines += [",".join([*(f"{v}" for v in row), str(label)]) for row, label in zip(x, labels)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_npz_class_names_name_integer_ids_in_their_order(tmp_path):
    x, y = _xy(classes=3)
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["zebra", "ant", "moth"]))
    d = load_dataset(tmp_path / "d.npz")
    assert d.class_names == ("zebra", "ant", "moth")  # not sorted: id 0 is zebra, as the file says
    assert np.array_equal(np.unique(d.y_train), [0, 1, 2])
    row = d.x_train[0]
    assert y[int(np.argmin(np.abs(x - row).sum(axis=1)))] == d.y_train[0]  # ids kept, not renumbered


def test_npz_class_names_map_string_labels(tmp_path, caplog):
    x, y = _xy(classes=3)
    names = np.array(["zebra", "ant", "moth"])
    np.savez(tmp_path / "d.npz", x=x, y=names[y], class_names=names)
    with caplog.at_level("WARNING", logger="deploykit.data"):
        d = load_dataset(tmp_path / "d.npz")
    assert d.class_names == ("zebra", "ant", "moth") and not caplog.records
    for xs, ys in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        i = np.argmin(np.abs(x[None] - xs[:, None]).sum(axis=2), axis=1)
        assert np.array_equal(names[ys], names[y[i]])


def test_class_names_given_to_load_dataset_fix_the_order_of_a_csv(tmp_path):
    x, y = _xy(classes=3)
    names = np.array(["zebra", "ant", "moth"])
    path = _csv(tmp_path / "d.csv", x, names[y])
    d = load_dataset(path, class_names="moth,zebra,ant")
    assert d.class_names == ("moth", "zebra", "ant")
    i = int(np.argmin(np.abs(x - d.x_train[0]).sum(axis=1)))
    assert d.class_names[d.y_train[0]] == names[y[i]]
    assert load_dataset(path, class_names=["moth", "zebra", "ant"]).class_names == ("moth", "zebra", "ant")


def test_a_label_missing_from_class_names_is_named(tmp_path):
    x, y = _xy(classes=3)
    np.savez(
        tmp_path / "s.npz", x=x, y=np.array(["zebra", "ant", "moth"])[y], class_names=np.array(["zebra", "ant", "bee"])
    )
    with pytest.raises(DataError, match=r"label 'moth' is not in class_names \(zebra, ant, bee\)") as info:
        load_dataset(tmp_path / "s.npz")
    assert str(tmp_path / "s.npz") in str(info.value)
    np.savez(tmp_path / "i.npz", x=x, y=y, class_names=np.array(["a", "b"]))
    with pytest.raises(DataError, match="label 2 is not a class id: class_names holds 2 names"):
        load_dataset(tmp_path / "i.npz")
    np.savez(tmp_path / "c.npz", x=x, y=y, class_names=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match=r"holds class_names \['a', 'b', 'c'\], but \['c', 'b', 'a'\] were given"):
        load_dataset(tmp_path / "c.npz", class_names="c,b,a")


@pytest.mark.parametrize("bad", ["a", "a,b,a", ["a", ""], 3])
def test_bad_class_names_are_a_config_error(bad):
    with pytest.raises(ConfigError, match="class_names"):
        load_dataset("digits", class_names=bad)


def test_string_labels_without_class_names_warn_once_with_the_order(tmp_path, caplog):
    x, y = _xy(classes=3)
    path = _csv(tmp_path / "d.csv", x, np.array(["zebra", "ant", "moth"])[y])
    with caplog.at_level("WARNING", logger="deploykit.data"):
        d = load_dataset(path)
    assert d.class_names == ("ant", "moth", "zebra")
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "sorted order (ant, moth, zebra)" in message and "--class-names" in message and str(path) in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="deploykit.data"):
        load_dataset("digits")
        load_dataset(path, class_names="ant,moth,zebra")
    assert not caplog.records  # ids, or names given: nothing was guessed


def test_a_regression_target_loads_as_float_targets(tmp_path):
    from sklearn.datasets import load_digits

    from deploykit.core.task import Task

    digits = load_digits()
    prices = (digits.data.sum(axis=1) * 37).astype(np.int64)  # integer-valued, hundreds of values over 1797 rows
    np.savez(tmp_path / "r.npz", x=digits.data, y=prices)
    d = load_dataset(tmp_path / "r.npz")
    assert d.task is Task.REGRESSION and d.class_names == () and d.num_outputs == 1
    assert d.y_train.dtype == np.float32 and d.y_train.ndim == 1
    assert sorted(np.concatenate([d.y_train, d.y_val, d.y_test])) == sorted(prices.astype(np.float32))
    np.savez(tmp_path / "f.npz", x=digits.data, y=prices / 7.3)
    assert load_dataset(tmp_path / "f.npz").task is Task.REGRESSION
    with pytest.raises(
        DataError, match="labels must be class ids or names, got non-integer numbers .*--task regression"
    ):
        load_dataset(tmp_path / "f.npz", task="classification")


def test_many_classes_with_enough_rows_still_load(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(120), 6)  # 120 classes, 6 rows each: a real (small) many-class dataset
    np.savez(tmp_path / "m.npz", x=rng.normal(size=(len(y), 4)), y=y)
    d = load_dataset(tmp_path / "m.npz", split=SplitConfig(val_fraction=0.17, test_fraction=0.17))
    assert d.num_classes == 120


@pytest.mark.slow
def test_class_names_flow_from_the_cli_into_the_onnx_metadata(tmp_path, capsys):
    from deploykit.cli.main import main
    from deploykit.export.metadata import read_metadata
    from deploykit.io.models import save_model
    from tests.helpers import build_dense

    x, y = _xy(classes=3)
    path = _csv(tmp_path / "d.csv", x, np.array(["zebra", "ant", "moth"])[y], column="species")
    model = save_model(build_dense(input_dim=5, hidden=(8,), classes=3, bn=False, dropout=0), tmp_path / "m.keras")
    code = main(
        [
            "export",
            str(model),
            "--data",
            str(path),
            "--label-column",
            "species",
            "--class-names",
            "moth,zebra,ant",
            "--formats",
            "onnx",
            "--quantize",
            "float32",
            "--repeats",
            "2",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert read_metadata(tmp_path / "out" / "model.onnx").class_names == ["moth", "zebra", "ant"]


def test_few_rows_per_value_is_a_regression_target_too(tmp_path, caplog):
    from deploykit.core.task import Task

    y = np.repeat(np.arange(60), 3)  # 60 values, 3 rows each: every value could be split, but it is a measurement
    np.savez(tmp_path / "r.npz", x=np.random.default_rng(0).normal(size=(len(y), 4)), y=y + 1000)
    with caplog.at_level("INFO", logger="deploykit.data"):
        assert load_dataset(tmp_path / "r.npz").task is Task.REGRESSION
    assert "60 distinct values over 180 rows" in caplog.text and "--task classification" in caplog.text
    with pytest.raises(DataError, match="cannot make a stratified split"):  # --task classification is obeyed
        load_dataset(tmp_path / "r.npz", task="classification")


def test_input_class_names_round_trip_through_the_pipeline_toml():
    from deploykit.pipeline.config import OptimizeConfig

    config = OptimizeConfig().with_input(class_names="moth,zebra,ant")
    assert config.input.class_names == ("moth", "zebra", "ant")
    assert OptimizeConfig.from_toml_text(config.to_toml()) == config
    assert "class_names" not in OptimizeConfig().to_toml()  # unset: the data's own names
    with pytest.raises(ConfigError, match="input.class_names: class names must be distinct; repeated: a"):
        OptimizeConfig().with_input(class_names=["a", "b", "a"])


def test_as_dataset_takes_class_names_for_arrays_and_refuses_renaming_a_dataset():
    from deploykit.io.inputs import as_dataset

    x, y = _xy(classes=3)
    d = as_dataset((x, y), class_names="c,a,b")
    assert d.class_names == ("c", "a", "b")
    assert as_dataset(d, class_names=["c", "a", "b"]) is d
    with pytest.raises(
        DataError, match=r"names its classes \['c', 'a', 'b'\], but class_names \['a', 'b', 'c'\] were given"
    ):
        as_dataset(d, class_names="a,b,c")
