"""The `bnn` CLI: exit codes, one-line errors, no files left behind, reports."""

import re

import pytest

from tests.conftest import invoke


def _one_line_error(result, code=2):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_version_and_help_list_the_commands():
    result = invoke(["--version"])
    assert result.exit_code == 0 and result.output.strip() == "bnn, version 0.1.0"
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("train", "convert", "benchmark", "evaluate"):
        assert re.search(rf"^\s+{command}\s", result.output, re.M), command


def test_train_unknown_model_is_one_line_and_writes_nothing(tmp_path):
    result = invoke(["train", "no-such-model", "--dataset", "digits", "--output", tmp_path / "run"])
    line = _one_line_error(result)
    assert line.startswith("Error: Unknown model 'no-such-model'")
    assert not (tmp_path / "run").exists()


def test_train_close_match_is_suggested():
    line = _one_line_error(invoke(["train", "binary-densenet82"]))
    assert "did you mean binary-densenet28" in line


def test_train_bad_option_is_refused_before_any_work(tmp_path):
    line = _one_line_error(invoke(["train", "binary-densenet28", "--epochs", "0",
                                   "--output", tmp_path / "run"]))
    assert line == "Error: Expected a positive epochs (image_size >= 4), got 0."
    assert not (tmp_path / "run").exists()


def test_convert_missing_file(tmp_path):
    line = _one_line_error(invoke(["convert", tmp_path / "missing.keras", "-o", tmp_path / "m.tflite"]))
    assert line == f"Error: No such model file or run folder: {tmp_path / 'missing.keras'}."
    assert list(tmp_path.iterdir()) == []


def test_convert_file_that_is_not_a_model(tmp_path):
    bogus = tmp_path / "model.keras"
    bogus.write_bytes(b"\x00\x01 definitely not a zip archive")
    line = _one_line_error(invoke(["convert", bogus, "-o", tmp_path / "m.tflite"]))
    assert line.startswith(f"Error: Could not load {bogus} as a Keras model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_benchmark_file_that_is_not_a_flatbuffer(tmp_path):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"TFL2" * 64)
    line = _one_line_error(invoke(["benchmark", bogus]))
    assert line == f"Error: {bogus} is not a TFLite flatbuffer (no 'TFL3' identifier); " \
                   "pass a .tflite file written by `bnn convert`."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_convert_reports_size_ops_and_agreement(digits_convert):
    path, result = digits_convert
    size = path.stat().st_size
    assert f"Wrote {path} ({size:,} bytes)" in result.output
    assert re.search(r"Ops: .*LceBconv2d 23", result.output)
    match = re.search(r"on 64 digits test images: max \|diff\| ([\d.e+-]+), top-1 agreement ([\d.]+)%",
                      result.output)
    assert match, result.output
    assert float(match.group(2)) >= 95.0


def test_benchmark_reports_median_and_p90(digits_tflite):
    result = invoke(["benchmark", digits_tflite, "--runs", "5", "--warmup", "1"])
    assert result.exit_code == 0, result.output
    match = re.search(r"5 runs, 1 thread\(s\): median ([\d.]+) ms, p90 ([\d.]+) ms, min ([\d.]+) ms",
                      result.output)
    assert match, result.output
    median, p90, fastest = map(float, match.groups())
    assert 0 < fastest <= median <= p90


@pytest.mark.parametrize("args, message", [
    (["--runs", "0"], "Expected runs >= 1"),
    (["--threads", "0"], "Expected threads >= 1"),
])
def test_benchmark_bad_numbers(digits_tflite, args, message):
    line = _one_line_error(invoke(["benchmark", digits_tflite, *args]))
    assert message in line


def test_internal_errors_are_one_line_with_exit_code_1(monkeypatch, tmp_path):
    import convert.loading

    def boom(path):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(convert.loading, "load_trained_model", boom)
    line = _one_line_error(invoke(["convert", tmp_path]), code=1)
    assert line == ("Internal error: RuntimeError: simulated bug "
                    "(rerun with --debug for the traceback)")
