"""What earlier versions wrote still works: resume, extend, convert and evaluate their files.

The folders under tests/fixtures/ were written by bnn 0.1.0 and 0.2.0 (each has a README.md
with the commands).
"""

import json
import shutil

import pytest

from tests.conftest import FIXTURES, invoke



def private_copy(tmp_path, version):
    """A copy of the fixtures of bnn `version` (commands must not write into the repository)."""
    folder = tmp_path / version
    shutil.copytree(FIXTURES / version, folder)
    return folder


@pytest.fixture
def old(tmp_path):
    return private_copy(tmp_path, "v0.1")


@pytest.fixture
def v02(tmp_path):
    return private_copy(tmp_path, "v0.2")


@pytest.mark.parametrize("version, done", [("v0.1", 1), ("v0.2", 2)])
def test_interrupted_old_runs_resume_to_their_recorded_epochs(tmp_path, version, done):
    run = private_copy(tmp_path, version) / "interrupted_run"
    result = invoke(["train", "--resume", run])
    assert result.exit_code == 0, result.output
    assert f"{done} of 3 epochs done" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["epochs_this_session"] == 3 - done


@pytest.mark.parametrize("version", ["v0.1", "v0.2"])
def test_finished_old_runs_convert_and_their_old_tflite_evaluates(tmp_path, version):
    old = private_copy(tmp_path, version)
    result = invoke(["convert", old / "finished_run", "-o", old / "new.tflite"])
    assert result.exit_code == 0, result.output
    assert "top-1 agreement 100.00%" in result.output
    result = invoke(["evaluate", old / "finished_run.tflite"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "digits" in result.output


def test_finished_0_1_run_is_finished_and_cannot_be_extended(old):
    run = old / "finished_run"
    result = invoke(["train", "--resume", run])
    assert result.exit_code == 2 and "already finished all its 2 epochs" in result.output
    result = invoke(["train", "--resume", run, "--epochs", "3"])
    assert result.exit_code == 2, result.output
    assert "finished without keeping its training state" in result.output
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


def test_finished_0_2_run_extends_from_its_backup(v02):
    run = v02 / "finished_run"
    result = invoke(["train", "--resume", run, "--epochs", "3"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 3 and config["epochs_changes"][-1]["to"] == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["epochs_this_session"] == 1
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 3


def test_0_2_run_converts_to_the_bytes_0_2_wrote_but_for_version_and_hash(v02):
    """Same model, same flatbuffer: only the metadata's bnn_version and content hash differ."""
    result = invoke(["convert", v02 / "finished_run", "-o", v02 / "new.tflite"])
    assert result.exit_code == 0, result.output
    old, new = (v02 / "finished_run.tflite").read_bytes(), (v02 / "new.tflite").read_bytes()
    assert len(old) == len(new)
    start = old.index(b'{"bnn_version"')
    end = old.index(b"}", old.index(b'"content_sha256"'))
    assert start == new.index(b'{"bnn_version"')
    assert old[:start] == new[:start] and old[end:] == new[end:]
    from convert import Flatbuffer

    old_meta, new_meta = (Flatbuffer.from_file(v02 / name).metadata
                          for name in ("finished_run.tflite", "new.tflite"))
    for meta in (old_meta, new_meta):
        meta.pop("bnn_version"), meta.pop("content_sha256", None)
    assert old_meta == new_meta
