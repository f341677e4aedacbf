"""``deploykit ensemble`` in-process: member files in, one validated ensemble ONNX and its size report out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deploykit.cli.main import main
from tests.uncertainty.support import session


@pytest.fixture(scope="module")
def member_files(digits, tmp_path_factory):
    """The two member files, trained once for the module: every test takes the same two (the CLI only reads them)."""
    return _member_files(tmp_path_factory.mktemp("members"), digits)


def _member_files(folder, digits, dropout=0.2):
    from deploykit.backend import set_seed
    from deploykit.io.models import save_model
    from tests.helpers import build_dense

    files = []
    for seed in (1, 2):
        set_seed(seed)
        model = build_dense(hidden=(32,), data=digits, bn=False, dropout=dropout)
        model.compile(optimizer="nadam", loss="sparse_categorical_crossentropy")
        model.fit(digits.x_train, digits.y_train, epochs=3, verbose=0)
        files.append(folder / f"m{seed}.keras")
        save_model(model, files[-1])
    return files


@pytest.mark.slow
def test_two_member_files_become_one_int8_ensemble(tmp_path, digits, capsys, member_files):
    files = member_files
    out = tmp_path / "out"
    assert (
        main(
            [
                "ensemble",
                *map(str, files),
                "--data",
                "digits",
                "--out",
                str(out),
                "--tune-epochs",
                "2",
                "--sparsity",
                "0.5",
                "--no-temperature",
            ]
        )
        == 0
    )
    summary = json.loads((out / "ensemble.json").read_text())
    assert summary["sizes"]["members"] == 2 and summary["comparison"]["mc"]["accuracy"] > 0.8
    assert summary["comparison"]["method"] == "deep ensemble" and summary["comparison"]["temperature"] is None
    outputs = {o.name for o in session(out / "ensemble.onnx").get_outputs()}
    assert {
        "mean",
        "predictive_entropy",
        "mutual_information",
        "predicted_class",
    } <= outputs and "abstain" not in outputs
    mean = session(out / "ensemble.onnx").run(["mean"], {"input": digits.x_test[:5]})[0]
    members = np.mean(
        [session(out / "members" / f"member{k}.onnx").run(None, {"input": digits.x_test[:5]})[0] for k in (0, 1)], 0
    )
    np.testing.assert_allclose(mean, members, atol=1e-6)
    text = (out / "ensemble.md").read_text()
    printed = capsys.readouterr()
    assert "gzip" in text and "Deterministic vs deep ensemble" in text and "wrote" in printed.out
    assert str(tmp_path) not in (out / "ensemble.json").read_text().replace(str(out), "OUT")  # no staging paths
    # progress people can read: the members' steps, not every epoch of every member, and no temporary folder
    assert "member 2/2" in printed.err and "epoch 1/2" not in printed.err and "deploykit-member-" not in printed.err


@pytest.mark.slow
def test_the_ensemble_ships_calibrated_with_a_threshold_and_its_members_keras_models(
    tmp_path, digits, capsys, member_files
):
    """By default the ensemble carries a temperature fitted on the validation split; --target-coverage adds the
    served `abstain` decision; --ood-data reports AUROC; members/member{k}.keras are the optimized Keras models."""
    import onnx

    from deploykit.io.models import load_model
    from deploykit.uncertainty import UncertaintyPredictor
    from deploykit.uncertainty.temperature import read_temperature

    files = member_files
    ood = tmp_path / "ood.npy"
    np.save(ood, np.random.default_rng(0).uniform(0, 16, (100, 64)).astype("float32"))
    out = tmp_path / "out"
    assert (
        main(
            [
                "ensemble",
                *map(str, files),
                "--data",
                "digits",
                "--out",
                str(out),
                "--tune-epochs",
                "2",
                "--sparsity",
                "0.5",
                "--target-coverage",
                "0.8",
                "--ood-data",
                str(ood),
            ]
        )
        == 0
    )
    summary = json.loads((out / "ensemble.json").read_text())
    c = summary["comparison"]
    fit = read_temperature(onnx.load(str(out / "ensemble.onnx")))
    assert fit is not None and fit["temperature"] == pytest.approx(c["temperature"]["fit"]["temperature"])
    assert c["temperature"]["fit"]["nll_after"] <= c["temperature"]["fit"]["nll_before"] + 1e-9  # fitted on validation
    assert c["selective"]["chosen"]["coverage"] >= 0.8 and 0 < c["selective"]["test"]["coverage"] <= 1
    result = UncertaintyPredictor(out / "ensemble.onnx").predict(digits.x_test)
    assert result.abstain is not None and result.abstain.mean() == pytest.approx(1 - c["selective"]["test"]["coverage"])
    assert {r["measure"] for r in c["ood"]} >= {"entropy", "mutual_information"} and all(
        0 <= r["auroc"] <= 1 for r in c["ood"]
    )
    for k in (0, 1):
        member = load_model(out / "members" / f"member{k}.keras")
        agree = np.mean(
            np.asarray(member(digits.x_test, training=False)).argmax(1)
            == session(out / "members" / f"member{k}.onnx").run(None, {"input": digits.x_test})[0].argmax(1)
        )
        assert agree > 0.95, agree  # the Keras model the int8 member was exported from
    text = (out / "ensemble.md").read_text()
    assert "Temperature scaling" in text and "Selective prediction" in text and "Out-of-distribution" in text


@pytest.mark.slow
def test_mc_dropout_inside_each_member(tmp_path, digits, capsys, member_files):
    """--mc-samples T: each member file is an int8 MC Dropout model outputting its T samples; the ensemble
    reduces all K*T, and its mean is the average of every member's sample probabilities."""
    files = member_files  # dropout 0.2 in each member
    out = tmp_path / "out"
    assert (
        main(
            [
                "ensemble",
                *map(str, files),
                "--data",
                "digits",
                "--out",
                str(out),
                "--tune-epochs",
                "2",
                "--sparsity",
                "0.5",
                "--mc-samples",
                "8",
            ]
        )
        == 0
    )
    summary = json.loads((out / "ensemble.json").read_text())
    assert summary["mc_samples"] == 8 and summary["comparison"]["mc"]["accuracy"] > 0.8
    assert (
        summary["comparison"]["deterministic"]["accuracy"] > 0.8
    )  # the int8 MC member 0, prepared like every int8 export
    assert summary["comparison"]["temperature"]["fit"]["placement"] in ("per_sample", "mean")  # stored in the graph
    member = session(out / "members" / "member0.onnx")
    samples = member.run(["sample_probabilities"], {"input": digits.x_test[:5]})[0]
    assert samples.shape == (8, 5, digits.num_classes) and samples.std(0).max() > 0
    proto = __import__("onnx").load(str(out / "members" / "member0.onnx"))
    assert any(n.op_type == "MatMulInteger" or n.op_type == "DynamicQuantizeLinear" for n in proto.graph.node)
    from deploykit.export.metadata import read_metadata

    assert 0.4 < read_metadata(proto).sparsity < 0.6  # pruned to 0.5 (the output layer kept dense), as recorded
    outputs = session(out / "ensemble.onnx").run(["mean", "std"], {"input": digits.x_test[:5]})
    assert outputs[0].shape == (5, digits.num_classes) and (outputs[1] > 0).any()
    assert "MC Dropout inside each member: 8 samples each, 16 reduced per call" in (out / "ensemble.md").read_text()


def test_one_model_file_is_a_usage_error(tmp_path, capsys):
    assert main(["ensemble", "only.keras", "--out", str(tmp_path / "o")]) == 2
    assert "at least 2 model files" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "flags, code, message",
    [
        (["--mc-samples", "0"], 2, "--mc-samples must be >= 1, got 0"),
        (["--target-accuracy", "1.5"], 2, "target_accuracy"),
        (["--ood-data", "missing.npy"], 1, "OOD data missing.npy: no such file"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, capsys, flags, code, message):
    assert main(["ensemble", "a.keras", "b.keras", "--out", str(tmp_path / "o"), *flags]) == code  # 2 usage, 1 data
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
