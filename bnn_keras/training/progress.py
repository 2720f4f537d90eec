"""How far a run folder got, read from its files, and whether it can be resumed.

status.json is a report for people and can be stale (a process killed with SIGKILL) or
deleted; the model, metrics and epoch backup files are what a resume acts on.
"""

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Optional

import tensorflow as tf

from bnn_keras.errors import BnnError
from bnn_keras.training.config import (
    BACKUP_DIR,
    METRICS_FILE,
    MODEL_FILE,
    RunRecord,
    TrainConfig,
)
from bnn_keras.training.run_callbacks import read_status


@dataclasses.dataclass(frozen=True)
class RunProgress:
    """How far a run folder got.

    Attributes:
        epochs_done: Complete epochs (from the epoch backup, else from a finished run's
            metrics.json, else 0).
        finished: model.keras and metrics.json are there for the run's recorded epochs.
        has_backup: The epoch backup (weights, optimizer state, epoch counter) is there.
    """

    epochs_done: int
    finished: bool
    has_backup: bool



def run_progress(run_dir: Path, record: Optional[RunRecord] = None) -> RunProgress:
    """How far the run in `run_dir` got, from its files rather than from status.json.

    status.json is a report for people and can be stale (a process killed with SIGKILL) or
    deleted; the model, metrics and backup files are what a resume acts on.

    Args:
        run_dir: The run folder.
        record: Its `RunRecord`, when already read (otherwise config.json is read).
    """
    run_dir = Path(run_dir)
    record = RunRecord.read(run_dir) if record is None else record
    try:
        finished_epochs = json.loads((run_dir / METRICS_FILE).read_text()).get("epochs")
    except (OSError, ValueError, AttributeError):
        finished_epochs = None
    finished = (run_dir / MODEL_FILE).is_file() and finished_epochs is not None and (
        finished_epochs == record.config.epochs)
    backup_epoch = backup_next_epoch(run_dir / BACKUP_DIR)
    has_backup = backup_epoch > 0
    done = backup_epoch if has_backup else (finished_epochs or 0) if finished else 0
    return RunProgress(epochs_done=done, finished=finished, has_backup=has_backup)



def check_resumable(run_dir: Path, previous: RunRecord, config: TrainConfig) -> int:
    """The epoch a resumed run starts at; refuses a finished run or an impossible target."""
    progress = run_progress(run_dir, previous)
    recorded = previous.config.epochs
    if progress.finished and config.epochs == recorded:
        raise BnnError(
            f"Run {run_dir} already finished all its {recorded} epochs; nothing to resume "
            f"(to train it further, resume it with more epochs)."
        )
    if progress.finished and not progress.has_backup:
        raise BnnError(
            f"Run {run_dir} finished without keeping its training state (no {BACKUP_DIR}/, "
            "as written by bnn before 0.2); it cannot be extended. Start a new run."
        )
    if config.epochs < progress.epochs_done:
        raise BnnError(
            f"Run {run_dir} has {progress.epochs_done} complete epochs; expected `epochs` >= "
            f"{progress.epochs_done}, got {config.epochs}."
        )
    if read_status(run_dir).get("state") == "running":
        warnings.warn(
            f"The process that last trained {run_dir} ended without saying so (status.json "
            f"still said running); resuming from its last complete epoch, "
            f"{progress.epochs_done}.",
            stacklevel=3,
        )
    return progress.epochs_done



def backup_next_epoch(backup_dir: Path) -> int:
    """The epoch a run resumes at: one after the last one in its `BackupAndRestore` backup.

    Read from the checkpoint itself (the counter Keras restores), so the data pipeline starts
    at the very epoch `fit` does; 0 when there is no backup.
    """
    latest = tf.train.latest_checkpoint(str(Path(backup_dir) / "chief"))
    if latest is None:
        return 0
    saved = int(tf.train.load_checkpoint(latest).get_tensor(
        "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"
    ))
    return saved + 1 if saved >= 0 else 0
