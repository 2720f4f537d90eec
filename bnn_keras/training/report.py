"""What a run says to people: its plan before the first epoch, its figures at the end.

Each line says what its figure is: which model (the float32 copy as deployed, or the model in
training precision), on what basis "best" is chosen, how the training rate was measured.
The lines are made from what the run resolved (`plan_lines`) and from its metrics.json
(`run_summary_lines`), so a front end prints them as they are.
"""

from typing import Any, Dict, List, Optional

import tensorflow as tf

from bnn_keras.training import recipes
from bnn_keras.training.config import MODEL_FILE, TrainConfig


def plan_lines(config: TrainConfig, recipe: recipes.Recipe, data: Any, precision: str,
               model: tf.keras.Model, resumed_after: Optional[int] = None) -> List[str]:
    """What a run is about to do, resolved, for people: the data and where it is read from,
    the model, the recipe and where its values come from, the precision.

    Args:
        config: The run's resolved options.
        recipe: The recipe it trains with.
        data: Its data.
        precision: The resolved precision policy.
        model: The model it trains (the student of a distilled run).
        resumed_after: The complete epochs a resume starts after; None for a new run.
    """
    splits = data.splits
    height, width, channels = data.input_shape
    lines = [
        f"Data: {splits.name} ({splits.source or 'as loaded'}): {splits.num_train:,} training "
        f"and {splits.num_test:,} test images at {height}x{width}x{channels}, "
        f"{splits.num_classes} classes" + (", augmented" if data.augment else ""),
        f"Model: {config.model}" + (" (float copy)" if config.float_copy else "")
        + f", {model.count_params():,} parameters"
        + (f", distilled from {config.teacher}" if config.teacher else ""),
        f"Recipe: {recipe.describe()}"
        + (f"; {data.steps} step{'' if data.steps == 1 else 's'} per epoch"
           if data.steps else ""),
    ]
    if config.precision == "auto":
        why = ("this machine runs bfloat16 natively" if precision == "mixed_bfloat16"
               else "this machine has no native bfloat16")
        lines.append(f"Precision: {precision} (auto: {why})")
    else:
        lines.append(f"Precision: {precision}")
    if resumed_after is not None:
        lines.append(f"Resuming after epoch {resumed_after} of {config.epochs}")
    return lines


def run_summary_lines(m: Dict[str, Any]) -> List[str]:
    """The lines that end `bnn train`, from a run's metrics.json: each figure says what it is.

    The test accuracy is the float32 model's (as deployed, and as `bnn evaluate` measures the
    .tflite); under mixed precision the model in training precision, which the epochs were
    validated in, gets its own line. The best epoch is compared with the last on that basis.
    """
    mixed = m.get("test_accuracy_mixed_precision")
    kept_epoch = (m.get("model_files") or {}).get(MODEL_FILE, {}).get("epoch")
    of_kept = (f", model.keras: epoch {kept_epoch}, the best"
               if kept_epoch is not None and kept_epoch != m["epochs"] else "")
    lines = [f"test accuracy {m['test_accuracy']:.4f} (float32 model, as deployed{of_kept})"]
    if mixed is not None:
        lines.append(f"test accuracy {mixed:.4f} (bfloat16 training precision, as validated "
                     f"after each epoch{of_kept})")
    lines.append(f"train accuracy {m['train_accuracy']:.4f} (running mean over the last epoch's "
                 "steps, in training precision)")
    if m.get("best_test_accuracy") is not None:
        last = m.get("last_epoch_test_accuracy")
        if last is None:  # a run of a bnn that did not record it: model.keras held the last
            last = mixed if mixed is not None else m["test_accuracy"]
        basis = " in training precision" if mixed is not None else ""
        when = (f", {m['time_to_best_s']:.1f} s into the run"
                if m.get("time_to_best_s") is not None else "")
        lines.append(f"best test accuracy{basis} {m['best_test_accuracy']:.4f} at epoch "
                     f"{m['best_epoch']} of {m['epochs']} (last epoch {last:.4f}){when}")
    lines += _model_file_lines(m)
    rate = (f"{m['images_per_s']:.1f} training images/s (steady state: "
            f"{_counted(m['images_per_s_steps'], 'step')} after the first)"
            if m.get("images_per_s") else "too few steps to measure a training rate")
    lines.append(f"{_counted(m['epochs_this_session'], 'epoch')} in {m['wall_time_s']:.1f} s; "
                 f"{rate}")
    return lines


def _model_file_lines(m: Dict[str, Any]) -> List[str]:
    """Which epoch each model file holds (`keep`), and whether it carries optimizer state."""
    model_files = m.get("model_files")
    if not model_files:
        return []  # a run of a bnn that did not say
    lines = []
    # model.keras first (metrics.json keeps its keys sorted).
    for name, saved in sorted(model_files.items(), key=lambda item: item[0] != MODEL_FILE):
        epoch = saved["epoch"]
        which = [label for label, at in (("last", m["epochs"]), ("best", m.get("best_epoch")))
                 if at == epoch]
        state = "" if saved["optimizer_state"] else ", no optimizer state"
        lines.append(f"{name}: epoch {epoch} (the {' and '.join(which) or 'kept'}{state})")
    return ["; ".join(lines)]


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
