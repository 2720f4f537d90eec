"""Training runs lose nothing: signals at every phase, two writers, and --resume's terms.

Where a process boundary is the point (a signal held back until the run is saved, then the
process's exit; SIGKILL; a second process writing the folder), the run is a real `bnn train`
child process, on a QuickNet small enough to train two epochs in seconds. The test-only
variables BNN_TEST_PAUSE_AFTER_FIT and BNN_TEST_PAUSE_BEFORE_FINISH widen the two short phases
between the last epoch and a finished run, and announce them on stderr, so a signal lands in
them. A signal that only interrupts `bnn train` in a phase is sent to this process by the
in-process command itself, as tests/training/test_run.py does mid-epoch: each child process
costs a TensorFlow import and a training.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import REPO_ROOT, invoke

# One block per section (QuickNet has 4): a build and a trace of the model cost a quarter.
TINY_QUICKNET = [
    "train", "quicknet", "--dataset", "digits", "--model-option", "section_filters=[8,8,16,16]",
    "--model-option", "section_blocks=[1,1,1,1]", "--image-size", "8", "--epochs", "2",
    "--steps-per-epoch", "3", "--batch-size", "16",
    # float32: where the CPU has bf16, "auto" adds a float32 copy's evaluation to every run.
    # No sign-flip tracking: its plot (matplotlib) costs each run about a second, and no test
    # here reads flips.csv or flips.png.
    "--precision", "float32", "--no-track-flips", "--verbose", "0",
]
BNN = [sys.executable, "-c", "import cli; cli.main()"]


def start_bnn(args, **env):
    """`bnn ARGS` as a child process with stderr piped (its pause announcements)."""
    return subprocess.Popen(
        [*BNN, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **{k: str(v) for k, v in env.items()}},
        cwd=REPO_ROOT,
    )


def wait_for_line(process, fragment, timeout=240):
    """Reads the child's stderr until a line contains `fragment`; returns what was read."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if fragment in line:
            return "".join(seen)
    raise AssertionError(f"never saw {fragment!r}; stderr so far:\n{''.join(seen)}")


def finish(process, timeout=240):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def hashes(folder: Path):
    """sha256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def status(run_dir):
    return json.loads((run_dir / "status.json").read_text())


def metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def assert_no_partial_files(run_dir):
    assert not [p.name for p in run_dir.rglob("*partial*")]


def assert_loadable(run_dir):
    import tensorflow as tf

    model = tf.keras.models.load_model(run_dir / "model.keras")
    assert model.output_shape == (None, 10)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run signalled (SIGTERM) while its final files were being written.

    The signal is held back until model.keras, metrics.json and the finished status are in
    place, then reported: exit 130 and a complete run. Before, SIGTERM there killed the
    process with a `.partial` model left and status.json at "running".
    """
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    process = start_bnn([*TINY_QUICKNET, "-o", run_dir], BNN_TEST_PAUSE_BEFORE_FINISH=3)
    wait_for_line(process, "BNN_TEST_PAUSE_BEFORE_FINISH")
    process.send_signal(signal.SIGTERM)
    code, out, err = finish(process)
    assert code == 130, err
    assert "SIGTERM arrived while the finished run was being saved; it was saved first" in err
    return run_dir


def test_signal_during_the_final_save_leaves_a_finished_run(finished_run, tmp_path):
    run_dir = Path(shutil.copytree(finished_run, tmp_path / "run"))
    assert status(run_dir) == {"state": "finished", "epochs_completed": 2, "epochs": 2}
    assert metrics(run_dir)["epochs"] == 2
    assert_no_partial_files(run_dir)
    assert_loadable(run_dir)


def test_resume_of_a_finished_run_changes_nothing_even_without_status(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "status.json").unlink()  # before, this made --resume train from scratch
    before = hashes(run_dir)
    result = invoke(["train", "--resume", run_dir])
    assert result.exit_code == 2, result.output
    assert "already finished all its 2 epochs; nothing to resume" in result.output
    assert hashes(run_dir) == before


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signal_between_last_epoch_and_save_keeps_the_run(tmp_path, signame, monkeypatch):
    """Before, Keras emptied backup/ when fit returned: a signal here lost every epoch.

    `bnn train` runs in this process and the signal is sent to it when the run reaches its
    pause after the last `fit` step (BNN_TEST_PAUSE_AFTER_FIT), where a child process would
    get it. A real child process signalled (SIGTERM) in this pause: test_stages.py's
    test_sigterm_in_stage_1_keeps_its_epoch_and_resume_finishes_the_run."""
    from bnn_keras.training import run as run_module

    pause, sent = run_module._test_pause, []

    def signal_in_the_pause(variable):
        if variable == "BNN_TEST_PAUSE_AFTER_FIT" and not sent:  # once: not in the resume
            sent.append(variable)
            os.kill(os.getpid(), getattr(signal, signame))
        pause(variable)

    monkeypatch.setattr(run_module, "_test_pause", signal_in_the_pause)
    monkeypatch.setenv("BNN_TEST_PAUSE_AFTER_FIT", "5")
    run_dir = tmp_path / "run"
    interrupted = invoke([*TINY_QUICKNET, "-o", run_dir])
    assert sent == ["BNN_TEST_PAUSE_AFTER_FIT"]
    monkeypatch.delenv("BNN_TEST_PAUSE_AFTER_FIT")
    assert interrupted.exit_code == 130, interrupted.output
    assert "interrupted after 2 complete epoch(s) of 2" in interrupted.stderr
    assert status(run_dir)["state"] == "interrupted"
    assert (run_dir / "backup" / "chief").is_dir() and not (run_dir / "model.keras").exists()
    assert_no_partial_files(run_dir)

    result = invoke(["train", "--resume", run_dir])
    assert result.exit_code == 0, result.output
    assert "2 of 2 epochs done" in result.output
    assert metrics(run_dir)["epochs"] == 2 and metrics(run_dir)["epochs_this_session"] == 0
    assert status(run_dir)["state"] == "finished"
    assert (run_dir / "history.csv").read_text().count("\n") == 3  # header + 2 epochs
    assert_loadable(run_dir)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run paused after its last `fit` step (BNN_TEST_PAUSE_AFTER_FIT), then killed (SIGKILL).

    While it paused, holding its folder, a second writer was tried: a new run into the folder
    and a resume of it (`second_writers`, with the folder's hashes before and after). Both tests
    need this same training up to the pause, so it runs once.
    """
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    process = start_bnn([*TINY_QUICKNET, "-o", run_dir], BNN_TEST_PAUSE_AFTER_FIT=60)
    try:
        wait_for_line(process, "BNN_TEST_PAUSE_AFTER_FIT")
        before = hashes(run_dir)
        second_writers = [invoke(args) for args in ([*TINY_QUICKNET, "-o", run_dir],
                                                    ["train", "--resume", run_dir])]
        after = hashes(run_dir)
    finally:
        process.kill()
        process.wait()
    return SimpleNamespace(run_dir=run_dir, pid=process.pid, second_writers=second_writers,
                           hashes_before=before, hashes_after=after)


def test_killed_run_leaves_a_stale_status_that_resume_recognises(killed_run, tmp_path):
    """SIGKILL cannot be caught: status.json says "running" and a partial file may be left.
    The lock died with the process, so --resume may take the folder, and says what happened."""
    run_dir = Path(shutil.copytree(killed_run.run_dir, tmp_path / "run"))
    assert status(run_dir)["state"] == "running" and status(run_dir)["pid"] == killed_run.pid
    leftover = run_dir / f".model.partial-{killed_run.pid}.keras"
    leftover.write_bytes(b"half a model")

    result = invoke(["train", "--resume", run_dir])
    assert result.exit_code == 0, result.output
    assert "ended without saying so (status.json still said running)" in result.output
    assert status(run_dir) == {"state": "finished", "epochs_completed": 2, "epochs": 2}
    assert_no_partial_files(run_dir)
    assert_loadable(run_dir)


def test_a_second_writer_is_refused_while_the_first_runs(killed_run):
    # A new run into the folder, then a resume of it, each tried while the first process ran.
    for result in killed_run.second_writers:
        assert result.exit_code == 2, result.output
        assert (f"Run folder {killed_run.run_dir} is in use by another bnn process "
                f"(PID {killed_run.pid})" in result.output)
    assert killed_run.hashes_after == killed_run.hashes_before


def test_resume_refuses_other_model_or_options_and_lists_them(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = hashes(run_dir)
    result = invoke(["train", "binarynet", "--resume", run_dir, "--lr", "0.5",
                     "--model-option", "section_filters=[8,8,16,16]",
                     "--model-option", "section_blocks=[1,1,1,1]"])
    assert result.exit_code == 2, result.output
    # Each difference is named; the model option that matches the record is not.
    assert "MODEL binarynet (the run has quicknet)" in result.output
    assert "--learning-rate 0.5 (the run has 0.001)" in result.output
    assert "section_filters" not in result.output
    assert hashes(run_dir) == before


def test_resume_with_more_epochs_extends_a_finished_run(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    result = invoke(["train", "--resume", run_dir, "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert "2 of 3 epochs done (extended from 2)" in result.output
    config = json.loads((run_dir / "config.json").read_text())
    assert config["epochs"] == 3
    assert config["epochs_changes"] == [{"from": 2, "to": 3, "after_epoch": 2}]
    assert metrics(run_dir)["epochs"] == 3 and metrics(run_dir)["epochs_this_session"] == 1
    assert [line.split(",")[0] for line in
            (run_dir / "history.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]
    assert_loadable(run_dir)

    fewer = invoke(["train", "--resume", run_dir, "--epochs", "1"])
    assert fewer.exit_code == 2
    assert "has 3 complete epochs; expected --epochs >= 3, got 1" in fewer.output


def test_interrupt_before_the_epoch_is_written_retrains_it(tmp_path, monkeypatch):
    """A signal after the last epoch's backup but before its history row once made --resume
    skip that epoch (history.csv kept 1 row of 2). The backup is now committed last."""
    from bnn_keras import training
    from tests.conftest import tiny_bnn, tiny_config

    write_row = training.HistoryWriter.on_epoch_end
    interrupted = []

    def interrupt_at_last_epoch(self, epoch, logs=None):
        if epoch == 1 and not interrupted:
            interrupted.append(epoch)
            raise KeyboardInterrupt  # as Ctrl-C arriving just before the row is written
        write_row(self, epoch, logs)

    monkeypatch.setattr(training.HistoryWriter, "on_epoch_end", interrupt_at_last_epoch)
    run_dir = tmp_path / "run"
    with pytest.raises(training.TrainingInterruptedError):
        training.train(tiny_config(epochs=2), tiny_bnn, run_dir, verbose=0)
    assert training.run_progress(run_dir).epochs_done == 1
    result = training.resume_training(run_dir, tiny_bnn, verbose=0)
    assert result.metrics["epochs_this_session"] == 1
    rows = (run_dir / "history.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["1", "2"]
