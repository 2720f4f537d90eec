"""`keep`: model.keras holds the last or the best epoch, and the other stays beside it."""

import csv
import json
import signal
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import training
from bnn_keras.errors import BnnError
from bnn_keras.training import best_epoch
from bnn_keras.training.report import run_summary_lines
from tests.conftest import invoke, tiny_bnn, tiny_config
from tests.training.test_run import SignalAt

# A learning rate high enough that the tiny BNN's test accuracy peaks before its last epoch
# (checked by each test: a best epoch that is the last would prove nothing).
_CONFIG = dict(epochs=6, learning_rate=0.05, track_flips=False)


def _weights_of(path: Path):
    """The weights of a model file, or of a best-epoch weights file."""
    if path.suffix == ".npz":
        return best_epoch.read_weights(path)
    return tf.keras.models.load_model(path).get_weights()


def _assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def _history(run_dir: Path):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def _runs(tmp_path_factory):
    """The same run (same seed) with `keep` last and with `keep` best."""
    root = tmp_path_factory.mktemp("keep")
    return {keep: training.train(tiny_config(keep=keep, **_CONFIG), tiny_bnn, root / keep,
                                 verbose=0)
            for keep in ("last", "best")}


@pytest.fixture
def runs(_runs, tmp_path):
    return {keep: Path(shutil.copytree(result.run_dir, tmp_path / keep))
            for keep, result in _runs.items()}


def test_keep_best_holds_the_best_epoch_and_last_keras_the_last(_runs, runs):
    metrics = json.loads((runs["best"] / "metrics.json").read_text())
    best, epochs = metrics["best_epoch"], metrics["epochs"]
    assert best < epochs  # otherwise there is nothing to choose
    rows = _history(runs["best"])
    accuracies = [float(row["val_accuracy"]) for row in rows]
    assert best == accuracies.index(max(accuracies)) + 1  # the first of the highest
    assert metrics["keep"] == "best"
    assert metrics["model_files"] == {
        "model.keras": {"epoch": best, "optimizer_state": False},
        "last.keras": {"epoch": epochs, "optimizer_state": True}}
    # model.keras holds the best epoch's weights, last.keras the last epoch's: the same as
    # the keep-last run of the same seed holds in its model.keras.
    _assert_same_weights(_weights_of(runs["best"] / "model.keras"),
                         _weights_of(runs["best"] / "best" / f"epoch-{best}.npz"))
    _assert_same_weights(_weights_of(runs["best"] / "last.keras"),
                         _weights_of(runs["last"] / "model.keras"))
    # The reported test accuracy is the kept model's: here (float32) the best epoch's.
    assert metrics["test_accuracy"] == pytest.approx(max(accuracies), abs=1e-6)
    assert metrics["last_epoch_test_accuracy"] == pytest.approx(accuracies[-1])
    # The returned model is the kept one.
    _assert_same_weights(_runs["best"].model.get_weights(),
                         _weights_of(runs["best"] / "model.keras"))
    # Only the best epoch's weights file stays; the epoch backup holds the last epoch.
    assert sorted(p.name for p in (runs["best"] / "best").iterdir()) == [f"epoch-{best}.npz"]
    config = json.loads((runs["best"] / "config.json").read_text())
    assert config["keep"] == "best" and config["format_version"] == 5


def test_keep_last_is_the_default_and_keeps_the_best_as_best_keras(runs):
    metrics = json.loads((runs["last"] / "metrics.json").read_text())
    best, epochs = metrics["best_epoch"], metrics["epochs"]
    assert best < epochs
    assert metrics["model_files"] == {
        "model.keras": {"epoch": epochs, "optimizer_state": True},
        "best.keras": {"epoch": best, "optimizer_state": False}}
    _assert_same_weights(_weights_of(runs["last"] / "best.keras"),
                         _weights_of(runs["best"] / "model.keras"))
    config = json.loads((runs["last"] / "config.json").read_text())
    assert "keep" not in config and config["format_version"] == 2  # as before `keep`
    assert training.TrainConfig().keep == "last"


def test_the_end_lines_say_which_epoch_each_file_holds(runs):
    best_lines = run_summary_lines(json.loads((runs["best"] / "metrics.json").read_text()))
    metrics = json.loads((runs["best"] / "metrics.json").read_text())
    best, epochs = metrics["best_epoch"], metrics["epochs"]
    assert best_lines[0] == (f"test accuracy {metrics['test_accuracy']:.4f} (float32 model, "
                             f"as deployed, model.keras: epoch {best}, the best)")
    assert (f"model.keras: epoch {best} (the best, no optimizer state); last.keras: epoch "
            f"{epochs} (the last)") in best_lines
    assert any(line.startswith(f"best test accuracy {metrics['best_test_accuracy']:.4f} at "
                               f"epoch {best} of {epochs} (last epoch "
                               f"{metrics['last_epoch_test_accuracy']:.4f})")
               for line in best_lines)
    last_lines = run_summary_lines(json.loads((runs["last"] / "metrics.json").read_text()))
    assert (f"model.keras: epoch {epochs} (the last); best.keras: epoch {best} (the best, "
            "no optimizer state)") in last_lines


def test_interrupted_keep_best_run_resumes_to_the_same_files(_runs, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(training.TrainingInterruptedError):
        training.train(tiny_config(keep="best", **_CONFIG), tiny_bnn, run_dir, verbose=0,
                       callbacks=[SignalAt(signal.SIGINT, epoch=3, batch=1)])
    assert not (run_dir / "model.keras").exists()
    result = training.resume_training(run_dir, tiny_bnn, verbose=0)
    whole = _runs["best"].run_dir
    assert result.metrics["model_files"] == json.loads(
        (whole / "metrics.json").read_text())["model_files"]
    for name in ("model.keras", "last.keras"):
        _assert_same_weights(_weights_of(run_dir / name), _weights_of(whole / name))


def test_resume_refuses_a_keep_best_run_whose_best_weights_are_gone(runs):
    run_dir = runs["best"]
    shutil.rmtree(run_dir / "best")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    best = json.loads((run_dir / "metrics.json").read_text())["best_epoch"]
    with pytest.raises(BnnError) as raised:
        training.resume_training(run_dir, tiny_bnn, epochs=8, verbose=0)
    assert str(raised.value) == (
        f"{run_dir} keeps its best epoch (`keep` best), and its best so far, epoch {best}, has "
        f"no weights file ({run_dir / 'best' / f'epoch-{best}.npz'} is missing), so the run "
        "could not end with it; start a new run, or copy the folder back as it was.")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_extending_a_run_whose_best_becomes_the_last_removes_the_other_file(runs):
    """After an extension, the files describe the extended run: when its best epoch is now
    its last, best.keras of the earlier finish would be stale."""
    from bnn_keras.training.run import _finish_run, _SavedModel

    run_dir = runs["last"]
    assert (run_dir / "best.keras").is_file()

    model = tf.keras.models.load_model(run_dir / "model.keras")
    _finish_run([_SavedModel("model.keras", model, 9, True)], {"epochs": 9}, run_dir, 9)
    assert not (run_dir / "best.keras").exists()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"


def test_keeper_ignores_uncommitted_files_and_prunes_on_commit(tmp_path):
    """The weights of an epoch are written before its backup is committed: after an
    interruption between the two, the resumed keeper must not take that epoch as kept."""
    model = tiny_bnn((8, 8, 1), 10)
    for epoch in (2, 4):  # 4: written, then interrupted before its commit
        with_weights = best_epoch.weights_path(tmp_path, epoch)
        with_weights.parent.mkdir(exist_ok=True)
        np.savez(with_weights, *model.get_weights())
    rows = [{"epoch": 1.0, "val_accuracy": 0.5}, {"epoch": 2.0, "val_accuracy": 0.7},
            {"epoch": 3.0, "val_accuracy": 0.7}]
    keeper = best_epoch.BestEpochKeeper(tmp_path, model, rows)
    assert (keeper.best_epoch, keeper.best_accuracy) == (2, 0.7)  # the first of the highest
    keeper.on_epoch_end(3, {"val_accuracy": 0.65})  # epoch 4 again, not better
    keeper.commit(3)
    assert sorted(best_epoch.kept_weights(tmp_path)) == [2]
    keeper.on_epoch_end(4, {"loss": 1.0})  # not validated: no candidate
    keeper.on_epoch_end(5, {"val_accuracy": 0.7})  # equal: the first stays
    assert keeper.best_epoch == 2
    keeper.on_epoch_end(6, {"val_accuracy": 0.9})
    keeper.commit(6)
    assert (keeper.best_epoch, sorted(best_epoch.kept_weights(tmp_path))) == (7, [7])


def test_check_best_kept_only_for_keep_best(tmp_path):
    rows = [{"epoch": 1.0, "val_accuracy": 0.5}]
    best_epoch.check_best_kept(tmp_path, rows, "last")  # nothing needed
    best_epoch.check_best_kept(tmp_path, [{"epoch": 1.0, "loss": 1.0}], "best")  # none yet
    with pytest.raises(BnnError, match="epoch 1, has no weights file"):
        best_epoch.check_best_kept(tmp_path, rows, "best")


def test_a_runs_other_model_file_converts_with_the_runs_input(runs, tmp_path):
    """best.keras (and last.keras) are read with the run's config.json, as model.keras is:
    the flatbuffer carries the run's input description, next to the file by default."""
    from convert import convert_trained_model, load_trained_model
    from convert.metadata import read_metadata

    best_keras = runs["last"] / "best.keras"
    loaded = load_trained_model(str(best_keras))
    assert loaded.run is not None and loaded.run.model == "tiny"
    report = convert_trained_model(best_keras)
    assert Path(report.path) == runs["last"] / "best.tflite"
    metadata = read_metadata((runs["last"] / "best.tflite").read_bytes())
    config = json.loads((runs["last"] / "config.json").read_text())
    assert metadata["class_names"] == config["class_names"]
    # Given the model-file options, it is the bare file they describe.
    result = invoke(["convert", best_keras, "--class-names", ",".join("abcdefghij"),
                     "--mean", "0", "--std", "1", "-o", tmp_path / "m.tflite"])
    assert result.exit_code == 0, result.output
    metadata = read_metadata((tmp_path / "m.tflite").read_bytes())
    assert metadata["class_names"] == list("abcdefghij")
