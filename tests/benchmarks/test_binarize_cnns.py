"""benchmarks/binarize_cnns.py end to end on tiny Fashion-MNIST-shaped files: the float CNN,
`bnn binarize`'s distilled two steps, the same two steps on the labels only, their verified
conversions, the kept results and the table."""

import json

import pytest

from tests.benchmarks.conftest import load_script, write_fashion_idx


@pytest.fixture(scope="module")
def script():
    return load_script("binarize_cnns.py", "binarize_cnns")


def test_an_unknown_cnn_is_refused_before_any_work(script, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--cnns", "mnist-convnet,lenet", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--cnns mnist-convnet,lenet: give some of mnist-convnet, vgg-style, resnet20" in (
        capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_benchmark_trains_binarizes_converts_and_resumes(script, tmp_path, capsys):
    from bnn_keras.training.config import RunRecord

    data = write_fashion_idx(tmp_path / "fashion")
    out = tmp_path / "out"
    args = ["--cnns", "mnist-convnet", "--output", str(out), "--data-dir", str(data),
            "--float-epochs", "1", "--step-epochs", "1", "--steps-per-epoch", "2",
            "--precision", "float32", "--verbose", "0"]
    script.main(args)
    folder = out / "mnist-convnet"
    teacher, labels = (json.loads((folder / f"result-{kind}.json").read_text())
                       for kind in ("teacher", "labels"))
    for result in (teacher, labels):
        assert result["lce_bconv2d"] == result["binary_convs"] == 1
        assert result["agreement"] == 1.0
        assert result["binary_mac_fraction"] == pytest.approx(0.9137, abs=1e-4)
    # The distilled run records its teacher; the labels-only steps have none, and step 2
    # starts from step 1's weights with binary ones.
    assert RunRecord.read(folder / "bnn-teacher").teacher_sha256 is not None
    steps = sorted((folder / "bnn-labels" / "stages").iterdir())
    assert [s.name for s in steps] == ["1-step1", "2-step2"]
    records = [RunRecord.read(step) for step in steps]
    assert [r.teacher_sha256 for r in records] == [None, None]
    assert [r.config.distill_loss for r in records] == [None, None]
    assert records[0].config.model_options["kernel_quantizer"] is None
    assert "kernel_quantizer" not in records[1].config.model_options
    table = capsys.readouterr().out
    assert "| mnist-convnet | 34,826 |" in table and "| 91.4% | 1 / 1 |" in table

    # Run again: every piece is read back, nothing is trained or written again.
    kept = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    script.main(args)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == kept
    assert (out / "binarize_cnns.png").is_file()
    capsys.readouterr()

    # Other settings would mix results: refused, nothing written.
    with pytest.raises(SystemExit) as exit_info:
        script.main([*args[:-8], "--step-epochs", "2", *args[-6:]])
    assert exit_info.value.code == 2
    assert f"{out} holds the results of other settings" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == kept
