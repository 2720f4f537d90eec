"""What earlier versions wrote still works: resume, extend, convert and evaluate their files.

The folders under tests/fixtures/ were written by bnn 0.1.0 and 0.2.0 (each has a README.md
with the commands).
"""

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import invoke

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0.1"
FIXTURES_0_2 = Path(__file__).resolve().parent / "fixtures" / "v0.2"


@pytest.fixture
def old(tmp_path):
    """A private copy of the fixtures (commands must not write into the repository)."""
    folder = tmp_path / "v0.1"
    shutil.copytree(FIXTURES, folder)
    return folder


@pytest.fixture
def v02(tmp_path):
    """A private copy of the bnn 0.2.0 fixtures."""
    folder = tmp_path / "v0.2"
    shutil.copytree(FIXTURES_0_2, folder)
    return folder


def test_interrupted_old_run_resumes_to_its_recorded_epochs(old):
    result = invoke(["train", "--resume", old / "interrupted_run"])
    assert result.exit_code == 0, result.output
    assert "1 of 3 epochs done" in result.output
    metrics = json.loads((old / "interrupted_run" / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["epochs_this_session"] == 2


def test_finished_old_run_is_finished_and_cannot_be_extended(old):
    run = old / "finished_run"
    result = invoke(["train", "--resume", run])
    assert result.exit_code == 2 and "already finished all its 2 epochs" in result.output
    result = invoke(["train", "--resume", run, "--epochs", "3"])
    assert result.exit_code == 2, result.output
    assert "finished without keeping its training state" in result.output
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


def test_finished_old_run_converts_and_its_old_tflite_evaluates(old):
    result = invoke(["convert", old / "finished_run", "-o", old / "new.tflite"])
    assert result.exit_code == 0, result.output
    assert "top-1 agreement 100.00%" in result.output
    result = invoke(["evaluate", old / "finished_run.tflite"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "digits" in result.output


def test_interrupted_0_2_run_resumes_to_its_recorded_epochs(v02):
    result = invoke(["train", "--resume", v02 / "interrupted_run"])
    assert result.exit_code == 0, result.output
    assert "2 of 3 epochs done" in result.output
    metrics = json.loads((v02 / "interrupted_run" / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["epochs_this_session"] == 1


def test_finished_0_2_run_extends_from_its_backup(v02):
    run = v02 / "finished_run"
    result = invoke(["train", "--resume", run, "--epochs", "3"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 3 and config["epochs_changes"][-1]["to"] == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["epochs_this_session"] == 1
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 3


def test_finished_0_2_run_converts_to_the_same_bytes_and_its_tflite_evaluates(v02):
    result = invoke(["convert", v02 / "finished_run", "-o", v02 / "new.tflite"])
    assert result.exit_code == 0, result.output
    assert "top-1 agreement 100.00%" in result.output
    result = invoke(["evaluate", v02 / "finished_run.tflite"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "digits" in result.output
