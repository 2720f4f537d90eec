"""The Keras callbacks that keep a run folder complete and resumable while `fit` runs.

Each writes one file of the run folder atomically (`bnn_keras.files`): status.json
(`StatusWriter`), history.csv (`HistoryWriter`) and the epoch backup (`EpochBackup`, saved by
`EpochCommit` once the epoch's other files are written). `StopOnNonFiniteLoss` stops at the
first NaN loss, before that state is saved; `EpochTimer` and `CompactProgbar` report.
`run_folder_callbacks` puts them in the order their hooks must run.
"""

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import tensorflow as tf

from bnn_keras import callbacks as callbacks_lib
from bnn_keras import files
from bnn_keras.errors import BnnError
from bnn_keras.training.config import HISTORY_FILE, STATUS_FILE, TENSORBOARD_DIR, TrainConfig


class NonFiniteLossError(BnnError):
    """The loss became NaN or infinite; training stopped before saving that state."""



class StopOnNonFiniteLoss(tf.keras.callbacks.Callback):
    """Raises `NonFiniteLossError` at the first non-finite batch loss.

    Unlike Keras' TerminateOnNaN, which lets the epoch finish (so BackupAndRestore would then
    save the NaN weights as the newest checkpoint), raising leaves the last good epoch as the
    newest checkpoint.
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"The loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}"
            )



class StatusWriter(tf.keras.callbacks.Callback):
    """Keeps status.json at the number of completed epochs while training runs.

    The running status names the process (`pid`), so a status left behind by a process that
    was killed outright can be told from a live one.
    """

    def __init__(self, run_dir: Path, epochs: int, completed: int = 0):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.epochs = epochs
        self.completed = completed

    def on_train_begin(self, logs=None) -> None:
        write_status(self.run_dir, "running", self.completed, self.epochs, pid=os.getpid())

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.completed = epoch + 1
        write_status(self.run_dir, "running", self.completed, self.epochs, pid=os.getpid())



def write_status(run_dir: Path, state: str, completed: int, epochs: int, **extra) -> None:
    """Writes status.json: `state` is running, interrupted, failed or finished."""
    files.write_json(Path(run_dir) / STATUS_FILE,
                     {"state": state, "epochs_completed": completed, "epochs": epochs, **extra})



def read_status(run_dir: Path) -> Dict[str, Any]:
    """status.json of a run folder ({} when there is none)."""
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}



# history.csv columns (and epoch log keys) of `EpochTimer`: the epoch's wall time, and the
# run's wall time at the epoch's end.
EPOCH_TIME_KEY = "epoch_time_s"
RUN_TIME_KEY = "run_time_s"


class EpochTimer(tf.keras.callbacks.Callback):
    """Wall time of each epoch and of each training step, and the run's wall time at the end
    of each epoch, to plot accuracy against time.

    `seconds` holds this session's epochs, and `step_seconds` its training steps but the
    first, which traces and compiles the step (the steady-state rate is read from the others;
    validation is not in them). Each epoch's logs get `epoch_time_s` (its wall
    time, validation included) and `run_time_s`: seconds of training since the run started,
    counted from `fit`'s start (restoring the epoch backup and tracing included) and, for a
    resumed run, added to `start_seconds`, the run time its earlier sessions reached (the time
    between sessions is not counted). Put it before `HistoryWriter`, which then records both.

    Args:
        start_seconds: The run time at the epoch `fit` starts from (0 for a new run); None
            when unknown (a run folder of a bnn that did not record it): no `run_time_s`.
    """

    def __init__(self, start_seconds: Optional[float] = 0.0):
        super().__init__()
        # The step hooks read no logs: Keras need not copy them to the host at every step.
        self._supports_tf_logs = True
        self.seconds: List[float] = []
        self.step_seconds: List[float] = []
        self.start_seconds = start_seconds
        self._started = 0.0
        self._train_started = 0.0
        self._step_started = 0.0
        self._first_step_done = False

    def on_train_begin(self, logs=None) -> None:
        self._train_started = time.perf_counter()

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if self._first_step_done:
            self.step_seconds.append(time.perf_counter() - self._step_started)
        self._first_step_done = True

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self._started)
        if logs is not None:
            logs[EPOCH_TIME_KEY] = self.seconds[-1]
            if self.start_seconds is not None:
                logs[RUN_TIME_KEY] = self.start_seconds + (now - self._train_started)


def run_time_at(history_path: Path, epoch: int) -> Optional[float]:
    """The run time (`run_time_s`) recorded in history.csv at the end of `epoch` (1-based;
    0 for epoch 0), or None when the file does not have it."""
    if epoch == 0:
        return 0.0
    try:
        with open(history_path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("epoch") and int(float(row["epoch"])) == epoch:
                    value = row.get(RUN_TIME_KEY)
                    return float(value) if value not in (None, "") else None
    except OSError:
        return None
    return None



class CompactProgbar(tf.keras.callbacks.ProgbarLogger):
    """Keras' progress bar without the per-layer flip ratios (they stay in the logs, so
    History and history.csv keep them; the bar shows only their total)."""

    @staticmethod
    def _compact(logs):
        return {k: v for k, v in (logs or {}).items()
                if (not k.startswith("flip_ratio/") or k == callbacks_lib.TOTAL_KEY)
                and k not in (EPOCH_TIME_KEY, RUN_TIME_KEY)}

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, self._compact(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, self._compact(logs))



class HistoryWriter(tf.keras.callbacks.Callback):
    """Rewrites `history.csv` atomically after every epoch, so it is never half-written.

    A resumed run starts from the rows already in the file; rows of epochs trained again are
    replaced, so the file always holds one row per completed epoch.
    """

    def __init__(self, path: Path, resume: bool = False):
        super().__init__()
        self.path = Path(path)
        self.rows: List[Dict[str, float]] = []
        if resume and self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [{k: float(v) for k, v in row.items() if v not in (None, "")}
                             for row in csv.DictReader(f)]

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, float]] = None) -> None:
        self.rows = [row for row in self.rows if row["epoch"] <= epoch]
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(
            {k: int(v) if k == "epoch" else v for k, v in row.items()} for row in self.rows
        )
        files.write_text(self.path, buffer.getvalue())



def run_folder_callbacks(config: TrainConfig, run_dir: Path, backup_dir: Path, resume: bool,
                   start_epoch: int = 0, *, tracked_model: Optional[tf.keras.Model] = None,
                   has_binary_kernels: bool = True,
                   best_keeper: Optional[tf.keras.callbacks.Callback] = None):
    """The run folder's callbacks, in the order their hooks must run.

    `tracked_model` is the model whose binary layers the sign-flip tracker follows, when it
    is not the fitted one (a distilled run fits a model that also holds the frozen teacher:
    only the student's layers are tracked). Without `has_binary_kernels` (the float copy of a
    BNN, `float_copy`) there are no signs to track: no tracker, whatever `track_flips` says.
    `best_keeper` (a `best_epoch.BestEpochKeeper`) saves each new best epoch's weights before
    the epoch is committed, and prunes the older ones after.

    The backup comes first: its on_train_begin restores the last complete epoch before
    SignFlipTracker snapshots the signs. The tracker comes before HistoryWriter, which then
    sees the flip ratios the tracker adds to the epoch logs. The epoch's backup is committed
    after both have written their files, and the status after that: an epoch is complete for
    `--resume` only once everything it writes is on disk.
    """
    # One backup folder for all workers: Keras' BackupAndRestore keeps the chief's checkpoint
    # there and gives the other workers temporary ones (it expects a shared file system).
    backup = EpochBackup(str(backup_dir))
    result = [backup, StopOnNonFiniteLoss()]
    if config.tensorboard:
        result.append(tf.keras.callbacks.TensorBoard(str(run_dir / TENSORBOARD_DIR)))
    if config.track_flips and has_binary_kernels:
        tracker = (callbacks_lib.SignFlipTracker if tracked_model is None
                   else _tracking(tracked_model))
        result.append(tracker(
            run_dir,
            log_dir=str(run_dir / TENSORBOARD_DIR) if config.tensorboard else None,
            every_n_steps=config.flip_every_n_steps,
            warn_threshold=config.flip_warn_threshold,
            resume=resume,
        ))
    result.append(HistoryWriter(run_dir / HISTORY_FILE, resume=resume))
    if best_keeper is not None:
        result.append(best_keeper)
    result += [EpochCommit(backup, best_keeper),
               StatusWriter(run_dir, config.epochs, start_epoch)]
    return result



def _tracking(model: tf.keras.Model) -> type:
    """A `SignFlipTracker` class that follows `model`'s binary layers whatever model `fit`
    hands it."""

    class StudentFlipTracker(callbacks_lib.SignFlipTracker):
        def set_model(self, fitted: tf.keras.Model) -> None:
            super().set_model(model)

    return StudentFlipTracker


class EpochBackup(tf.keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, saving an epoch only when `EpochCommit` says so, and keeping
    the backup when `fit` returns.

    Keras saves the backup first thing at the end of an epoch, before history.csv has the
    epoch's row: a signal in between made `--resume` skip an epoch that history.csv lacks. And
    Keras deletes the backup when `fit` returns, before the model is saved: a signal then lost
    the whole run. The run keeps it (see `_finish_run`).
    """

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        pass  # `commit`, called by EpochCommit once the epoch's files are written

    def commit(self, epoch: int) -> None:
        self._backup(epoch=epoch)



class EpochCommit(tf.keras.callbacks.Callback):
    """Saves the epoch backup after every other run-folder callback has written its files,
    then lets the best-epoch keeper drop the weights files that are no longer the best."""

    def __init__(self, backup: EpochBackup, best_keeper=None):
        super().__init__()
        self.backup = backup
        self.best_keeper = best_keeper

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.backup.commit(epoch)
        if self.best_keeper is not None:
            self.best_keeper.commit(epoch)
