"""The training application: from a data set and a registry model to a run folder.

Nothing here is part of the Keras plugin (`import bnn_keras` loads none of it). One module each:
`config` (`TrainConfig`, the options of a run, and `RunRecord`, its folder's config.json),
`run` (train and resume as small steps, with the folder locked), `run_callbacks` (the Keras
callbacks that keep the folder complete and resumable), `progress` (how far a folder got, read
from its files), `data` (data sets, the input
pipeline and its normalization), `recipes` (optimizers, schedules and losses of the papers),
`stages` (a paper's staged recipe trained as one run), `tricks` (training tricks that rewrite a
model), `precision` (float32 or mixed bfloat16),
`distribute` (one or several workers), `baselines` (the float copy of a BNN), `run_lock` and
`signals` (one writer per folder; Ctrl-C and SIGTERM that never split a write).

The names below are imported from their modules on first use, so `bnn_keras.training.precision`
can be used without loading the data sets:

    from bnn_keras.training import TrainConfig, train
"""

from typing import Dict

from bnn_keras._lazy import lazy_exports

# Public name -> the module that defines it.
_EXPORTS: Dict[str, str] = {
    **dict.fromkeys(
        ["BACKUP_DIR", "CONFIG_FILE", "FORMAT_VERSION", "HISTORY_FILE", "METRICS_FILE",
         "MODEL_FILE", "STATUS_FILE", "TENSORBOARD_DIR", "EpochsChange", "RunRecord",
         "TrainConfig", "read_run_config", "resolve_recipe"],
        "bnn_keras.training.config"),
    **dict.fromkeys(
        ["TrainResult", "TrainingInterruptedError", "library_versions", "resume_training",
         "train", "validation_epochs"],
        "bnn_keras.training.run"),
    **dict.fromkeys(
        ["HistoryWriter", "NonFiniteLossError", "StatusWriter", "read_status",
         "run_folder_callbacks", "write_status"],
        "bnn_keras.training.run_callbacks"),
    **dict.fromkeys(["RunProgress", "check_resumable", "run_progress"],
                    "bnn_keras.training.progress"),
    **dict.fromkeys(["STAGES_FILE", "StagedPlan", "StagedResult", "plan_stages",
                     "resume_staged", "train_staged"],
                    "bnn_keras.training.stages"),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("bnn_keras.training", _EXPORTS, globals())
