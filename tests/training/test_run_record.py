"""config.json is written and read in one place (`RunRecord`): typed, versioned, validated once.

Old layouts (bnn 0.1 and 0.2 wrote version 1, without `format_version`) still read, and what
is written keeps every key they wrote, so bnn 0.2 can read it too.
"""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from bnn_keras import training
from bnn_keras.errors import BnnError
from bnn_keras.training.config import FORMAT_VERSION, EpochsChange, RunRecord
from bnn_keras.training.data import Normalization
from bnn_keras.training.recipes import Recipe
from bnn_keras.training.run_files import RunSummary
from tests.conftest import FIXTURES, invoke

OLD_RUNS = [FIXTURES / version / run for version in ("v0.1", "v0.2")
            for run in ("finished_run", "interrupted_run")]


def _hashes(folder: Path):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run(tmp_path) -> Path:
    """A private copy of bnn 0.2's interrupted run (commands must not write the fixtures)."""
    return Path(shutil.copytree(FIXTURES / "v0.2" / "interrupted_run", tmp_path / "run"))


@pytest.mark.parametrize("run_dir", OLD_RUNS, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_old_config_files_read_as_version_1_and_write_back_every_key(run_dir, tmp_path):
    record = RunRecord.read(run_dir)
    assert record.format_version == 1
    assert record.config.model == "quicknet" and record.config.dataset == "digits"
    assert record.config.model_options == {"section_filters": [8, 8, 16, 16]}
    assert record.config.precision == "float32" and record.config.tricks == {}
    assert record.input_shape == (8, 8, 1) and record.num_classes == 10
    assert record.class_names == [str(d) for d in range(10)]
    assert isinstance(record.normalization, Normalization) and record.pixel_max == 16.0
    assert isinstance(record.recipe_resolved, Recipe)
    assert record.recipe_resolved.source == "bnn default"
    assert record.precision_resolved == "float32" and record.epochs_changes == []
    assert set(record.versions) == {"tensorflow", "tf_keras", "larq", "larq_compute_engine"}

    old = (run_dir / "config.json").read_text()
    record.write(tmp_path)
    new = (tmp_path / "config.json").read_text()
    # The same file plus one line: what a 0.2 reader finds is unchanged (layout 2: the run
    # did not start from a weights file).
    assert json.loads(new) == {**json.loads(old), "format_version": 2}
    assert [line for line in new.splitlines() if "format_version" not in line] == \
        old.splitlines()
    assert RunRecord.read(tmp_path) == dataclasses.replace(record, format_version=2)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no partial file left


def test_unknown_keys_are_kept_and_extensions_are_recorded(run, tmp_path):
    values = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**values, "note": "tried lr 1e-2"}))
    record = RunRecord.read(run)
    assert record.extra == {"note": "tried lr 1e-2"}
    longer = record.with_epochs(5, record.recipe_resolved.replace(epochs=5), after_epoch=2)
    longer.write(tmp_path)
    again = RunRecord.read(tmp_path)
    assert again.config.epochs == 5 and again.recipe_resolved.epochs == 5
    assert again.epochs_changes == [EpochsChange(old=3, new=5, after_epoch=2)]
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["note"] == "tried lr 1e-2"
    assert written["epochs_changes"] == [{"from": 3, "to": 5, "after_epoch": 2}]
    assert record.config.epochs == 3  # the record read is not changed


def _edit(run: Path, **changes) -> None:
    values = json.loads((run / "config.json").read_text())
    for key, value in changes.items():
        if value is KeyError:
            values.pop(key)
        else:
            values[key] = value
    (run / "config.json").write_text(json.dumps(values))


_BAD_FIELDS = [
    (dict(epochs="two"), "expected field 'epochs' to be an integer or null, got \"two\"."),
    (dict(augment=1), "expected field 'augment' to be true or false or null, got 1."),
    (dict(input_shape=[8, 8]), "expected field 'input_shape' to be a list of 3 positive "
                               "integers (height, width, channels), got [8, 8]."),
    (dict(class_names="0123456789"), "expected field 'class_names' to be a list of strings"),
    (dict(normalization={"mean": [1.0]}), "expected field 'normalization' to be an object "
                                          "with lists mean and std of the same length"),
    (dict(tricks={"bases": 2, "magic": True}), "expected field 'tricks' to be an object with "
                                                "some of input_quantizer"),
    (dict(recipe_resolved={"optimiser": "adam"}), "expected field 'recipe_resolved' to be a "
                                                   "recipe (Unknown recipe fields ['optimiser']"),
    (dict(epochs_changes=[{"from": 2}]), "expected field 'epochs_changes' to be an object with "
                                         "from, to and after_epoch"),
    (dict(num_classes=KeyError), "missing field 'num_classes'; it is not a config.json written "
                                 "by `bnn train`."),
    (dict(format_version=FORMAT_VERSION + 1), f"has format_version {FORMAT_VERSION + 1}, "
                                              f"newer than this bnn reads (up to "
                                              f"{FORMAT_VERSION}); upgrade bnn to use this "
                                              "run folder."),
    (dict(format_version="2"), "expected field 'format_version' to be an integer >= 1"),
]


@pytest.mark.parametrize("changes, message", _BAD_FIELDS)
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(run, changes, message):
    _edit(run, **changes)
    with pytest.raises(BnnError) as info:
        RunRecord.read(run)
    text = str(info.value)
    assert text.startswith(str(run / "config.json")) and message in text
    assert "\n" not in text


@pytest.mark.parametrize("run_dir", OLD_RUNS, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_the_deployment_summary_reads_what_the_record_reads(run_dir):
    record, summary = RunRecord.read(run_dir), RunSummary.read(run_dir)
    assert summary.model == record.config.model == "quicknet"
    assert summary.model_input == record.model_input
    assert summary.config_file == run_dir / "config.json"
    assert summary.to_metadata() == {"model": "quicknet", **record.model_input.to_metadata()}


# The cases above that are fields `RunSummary` reads: it refuses them with the record's words.
_SUMMARY_CASES = [case for case in _BAD_FIELDS
                  if set(case[0]) & {"input_shape", "class_names", "normalization",
                                     "num_classes", "format_version"}]


@pytest.mark.parametrize("changes, message", _SUMMARY_CASES)
def test_the_deployment_summary_refuses_a_bad_field_as_the_record_does(run, changes, message):
    _edit(run, **changes)
    with pytest.raises(BnnError) as from_record:
        RunRecord.read(run)
    with pytest.raises(BnnError) as from_summary:
        RunSummary.read(run)
    assert str(from_summary.value) == str(from_record.value)
    assert message in str(from_summary.value)


def test_missing_broken_and_non_object_files(tmp_path):
    with pytest.raises(BnnError, match=r"config.json does not exist: .* is not a run folder"):
        RunRecord.read(tmp_path)
    (tmp_path / "config.json").write_text('{"model": ')
    with pytest.raises(BnnError, match=r"config.json is not valid JSON \(Expecting value at "
                                       r"line 1, column 11\)"):
        RunRecord.read(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(BnnError, match="config.json does not hold a JSON object"):
        RunRecord.read(tmp_path)


def test_resume_and_convert_refuse_a_bad_record_in_one_line_and_change_nothing(run, tmp_path):
    _edit(run, batch_size=-1.5)
    before = _hashes(run)
    result = invoke(["train", "--resume", run])
    assert result.exit_code == 2, result.output
    # A record key is not an option: it is not spelled as one.
    assert result.stderr.strip() == (f"Error: {run / 'config.json'}: expected field "
                                     "'batch_size' to be an integer or null, got -1.5.")
    finished = Path(shutil.copytree(FIXTURES / "v0.2" / "finished_run", tmp_path / "done"))
    _edit(finished, input_shape=[8, 8, 0])
    result = invoke(["convert", finished, "-o", tmp_path / "m.tflite"])
    assert result.exit_code == 2, result.output
    assert "'input_shape' to be a list of 3 positive integers" in result.stderr
    assert _hashes(run) == before and not (tmp_path / "m.tflite").exists()


def test_resume_reads_config_json_once(resumed_v02_interrupted_run):
    # The session's `bnn train --resume` of bnn 0.2's interrupted run, which counted the
    # RunRecord.read calls it made (tests/cli/test_old_runs.py reads the same resume).
    resumed = resumed_v02_interrupted_run
    assert "2 of 3 epochs done" in resumed.output.output
    assert resumed.config_reads == 1
    assert json.loads((resumed.run_dir / "metrics.json").read_text())["epochs"] == 3
    # The record as bnn 0.2 wrote it: a resume to the recorded epochs does not rewrite it.
    assert "format_version" not in json.loads((resumed.run_dir / "config.json").read_text())


def test_a_record_that_changed_before_the_lock_is_refused(run):
    record = RunRecord.read(run)
    _edit(run, epochs=4)  # as another process extending the run meanwhile
    before = _hashes(run)
    with pytest.raises(BnnError, match="config.json changed while this command was starting"):
        training.resume_training(run, lambda shape, classes: None, record=record, verbose=0)
    assert _hashes(run) == before


def test_a_new_run_writes_the_current_layout(tmp_path):
    from tests.conftest import tiny_bnn, tiny_config

    result = training.train(tiny_config(epochs=1, steps_per_epoch=2, track_flips=False),
                            tiny_bnn, tmp_path / "run", verbose=0)
    written = json.loads((result.run_dir / "config.json").read_text())
    # Layout 2: only a run from a weights file needs 3 (tests/training/test_train_weights.py).
    assert written["format_version"] == 2
    # Every key bnn 0.2 wrote, so that it can read this run folder.
    old = json.loads((FIXTURES / "v0.2" / "finished_run" / "config.json").read_text())
    assert set(written) == set(old) | {"format_version"}
    record = RunRecord.read(result.run_dir)
    assert record.format_version == 2 and record.params == written["params"]
    assert record.to_dict() == written
    assert training.run_progress(result.run_dir, record).finished
