"""Training callbacks: the sign-flip tracker.

A binary network only changes when a latent weight crosses zero. The fraction of kernel signs
that flip per epoch is the direct read-out of "is the learning rate right?": if it stays high
late in training, the network keeps oscillating instead of converging (Helwegen et al.,
"Latent Weights Do Not Exist", which reads sign flips as the real optimizer steps of a BNN).

References:
    - BinaryNet: https://arxiv.org/abs/1602.02830
    - Helwegen et al., Latent Weights Do Not Exist: https://arxiv.org/abs/1906.02107
"""

import csv
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import tensorflow as tf

from bnn_keras import files
from bnn_keras.binary import quantized_kernel_layers

__all__ = ["SignFlipTracker"]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
TOTAL_KEY = "flip_ratio/total"


def _signs(layer: tf.keras.layers.Layer) -> np.ndarray:
    variable = getattr(layer.kernel, "latent_variable", layer.kernel)
    # Zero counts as +1, as in LCE's bit packing (bit 0 = +1).
    return np.asarray(tf.keras.backend.get_value(variable)) >= 0


@tf.keras.utils.register_keras_serializable(package="bnn_keras")
class SignFlipTracker(tf.keras.callbacks.Callback):
    """Tracks the fraction of binarized kernel weights whose sign flipped, per layer and total.

    Per epoch (and every `every_n_steps` training steps, against the previous step record) it
    computes, for each layer with a binarized kernel (a larq quantized layer whose
    `kernel_quantizer` is not `None`, nested layers included), `flipped / weights` of the latent
    kernel, and the total over all such layers weighted by their weight counts. Zero counts as
    +1. Results go to:

    - `logs` in `on_epoch_end` as `flip_ratio/total` and `flip_ratio/<layer name>`, so
      `History` sees them; `tf.keras.callbacks.CSVLogger` sees them only if it comes *after*
      this callback in the `callbacks` list (Keras calls callbacks in list order).
    - `self.history`: a list of dicts (`kind` "epoch" or "step", `epoch`, `step`, ratios).
      `epoch` counts from 1, as Keras prints epochs and history.csv numbers them (a step
      record carries the epoch it falls in); `step` is the global training step, from 1.
    - `flips.csv` in `run_dir` (or `csv_path`), rewritten atomically after every record.
    - TensorBoard scalars under `log_dir` (epoch records at Keras's own TensorBoard step for
      epoch N, N - 1, beside its `epoch_*` scalars; step records at the global step, under
      `flip_ratio_step/...`).
    - A PNG plot `flips.png` (or `plot_path`) of each layer's ratio per epoch at train end.

    If the total epoch ratio is above `warn_threshold` in each of `warn_patience` consecutive
    epochs that all lie after the first `warn_after` fraction of the planned epochs, it emits one
    `UserWarning` (and a log record): a too-high learning rate keeps flipping signs.

    Args:
        run_dir: Folder for `flips.csv` and `flips.png`.
        csv_path: Explicit CSV path (overrides `run_dir`).
        log_dir: TensorBoard log folder, or `None`.
        every_n_steps: Also record every N training steps, or `None`.
        plot_path: Explicit PNG path (overrides `run_dir`); no plot without either.
        warn_threshold: Total epoch ratio considered too high, or `None` for no warning.
        warn_patience: Number of consecutive late epochs above the threshold to warn.
        warn_after: Fraction of `params["epochs"]` after which "late" starts.

    Raises:
        ValueError: `every_n_steps < 1`, `warn_patience < 1` or `warn_after` outside [0, 1].
    """

    def __init__(
        self,
        run_dir: Optional[PathLike] = None,
        *,
        csv_path: Optional[PathLike] = None,
        log_dir: Optional[PathLike] = None,
        every_n_steps: Optional[int] = None,
        plot_path: Optional[PathLike] = None,
        warn_threshold: Optional[float] = 0.05,
        warn_patience: int = 3,
        warn_after: float = 0.5,
        resume: bool = False,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and int(every_n_steps) < 1:
            raise ValueError(f"Expected every_n_steps >= 1 or None, got {every_n_steps!r}.")
        if int(warn_patience) < 1:
            raise ValueError(f"Expected warn_patience >= 1, got {warn_patience!r}.")
        if not 0.0 <= float(warn_after) <= 1.0:
            raise ValueError(f"Expected warn_after in [0, 1], got {warn_after!r}.")
        self.run_dir = None if run_dir is None else str(run_dir)
        self.csv_path = str(csv_path) if csv_path is not None else (
            None if run_dir is None else str(Path(run_dir) / "flips.csv"))
        self.plot_path = str(plot_path) if plot_path is not None else (
            None if run_dir is None else str(Path(run_dir) / "flips.png"))
        self.log_dir = None if log_dir is None else str(log_dir)
        self.every_n_steps = None if every_n_steps is None else int(every_n_steps)
        self.warn_threshold = None if warn_threshold is None else float(warn_threshold)
        self.warn_patience = int(warn_patience)
        self.warn_after = float(warn_after)
        self.resume = bool(resume)
        self.history: List[Dict[str, Any]] = []
        self._layers: List[tf.keras.layers.Layer] = []
        self._epoch_signs: List[np.ndarray] = []
        self._step_signs: List[np.ndarray] = []
        self._global_step = 0
        self._epoch = 0
        self._warned = False
        self._writer = None

    # -- the measurement -------------------------------------------------------------------

    def _snapshot(self) -> List[np.ndarray]:
        return [_signs(layer) for layer in self._layers]

    def _ratios(self, before: List[np.ndarray], after: List[np.ndarray]) -> Dict[str, float]:
        ratios: Dict[str, float] = {}
        flipped_total, count_total = 0, 0
        for layer, old, new in zip(self._layers, before, after):
            flipped = int(np.count_nonzero(old != new))
            ratios[f"flip_ratio/{layer.name}"] = flipped / old.size if old.size else 0.0
            flipped_total += flipped
            count_total += old.size
        ratios[TOTAL_KEY] = flipped_total / count_total if count_total else 0.0
        return ratios

    def _start(self) -> None:
        self._layers = quantized_kernel_layers(self.model)
        snapshot = self._snapshot()
        self._epoch_signs = snapshot
        self._step_signs = [s.copy() for s in snapshot]

    # -- Keras hooks -----------------------------------------------------------------------

    def on_train_begin(self, logs: Optional[Dict[str, Any]] = None) -> None:
        # A resumed run continues the flip history written before the interruption; rows
        # of epochs that are trained again are dropped as those epochs end (see `_record`).
        self.history = self._read_csv() if self.resume else []
        self._global_step = max((int(r["step"]) for r in self.history), default=0)
        self._warned = False
        self._start()
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_begin(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        self._epoch = epoch + 1  # Keras passes 0 for the first epoch
        if not self._layers and self.model is not None:
            # Used outside `fit` (or the model was built after `on_train_begin`).
            self._start()

    def on_train_batch_end(self, batch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        self._global_step += 1
        if self.every_n_steps is None or self._global_step % self.every_n_steps:
            return
        after = self._snapshot()
        ratios = self._ratios(self._step_signs, after)
        self._step_signs = after
        self._record("step", ratios)

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
        if not self._layers:
            self._start()
        after = self._snapshot()
        ratios = self._ratios(self._epoch_signs, after)
        self._epoch_signs = after
        if logs is not None:
            logs.update(ratios)
        self._record("epoch", ratios, epoch=epoch + 1)
        self._maybe_warn()

    def on_train_end(self, logs: Optional[Dict[str, Any]] = None) -> None:
        if self._writer is not None:
            self._writer.flush()
        if self.plot_path is not None and any(r["kind"] == "epoch" for r in self.history):
            self.plot(self.plot_path)

    # -- outputs ---------------------------------------------------------------------------

    def _record(self, kind: str, ratios: Dict[str, float], epoch: Optional[int] = None) -> None:
        """Adds a record of `epoch` (1-based; default: the current one)."""
        epoch = self._epoch if epoch is None else epoch
        if kind == "epoch":
            self.history = [r for r in self.history if r["kind"] != "epoch" or r["epoch"] < epoch]
        self.history.append({"kind": kind, "epoch": epoch, "step": self._global_step, **ratios})
        if self._writer is not None:
            prefix, step = ("flip_ratio", epoch - 1) if kind == "epoch" else (
                "flip_ratio_step", self._global_step)
            with self._writer.as_default():
                for key, value in ratios.items():
                    tf.summary.scalar(prefix + key[len("flip_ratio"):], value, step=step)
        if self.csv_path is not None:
            files.write_text(self.csv_path, self.to_csv())

    def _read_csv(self) -> List[Dict[str, Any]]:
        """Rows of an existing flips.csv (numbers parsed, epochs from 1), or [] when there is
        none. bnn 0.3.0 and earlier numbered epochs from 0 in flips.csv; such a file (it has an
        epoch 0) is read renumbered, and written back from 1."""
        if self.csv_path is None or not Path(self.csv_path).is_file():
            return []
        with open(self.csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        parsed = []
        for row in rows:
            parsed.append({
                key: (value if key == "kind" else int(value) if key in ("epoch", "step")
                      else float(value))
                for key, value in row.items() if value not in (None, "")
            })
        if any(row.get("epoch") == 0 for row in parsed):
            for row in parsed:
                row["epoch"] += 1
        return parsed

    def to_csv(self) -> str:
        """The history as CSV text: `kind,epoch,step,flip_ratio/total,flip_ratio/<layer>...`."""
        columns = ["kind", "epoch", "step", TOTAL_KEY]
        for row in self.history:
            columns += [key for key in row if key not in columns]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        return out.getvalue()

    def plot(self, path: PathLike) -> Path:
        """Draws each layer's (and the total) epoch flip ratio over epochs into a PNG.

        Args:
            path: The PNG path, written atomically.

        Returns:
            The path.
        """
        # The object-oriented API with the Agg canvas needs no pyplot state and no global
        # backend switch, so it is safe in any process (headless servers, notebooks).
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = [r for r in self.history if r["kind"] == "epoch"]
        epochs = [r["epoch"] for r in rows]
        figure = Figure(figsize=(8, 4.5))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        keys = [k for k in rows[0] if k.startswith("flip_ratio/") and k != TOTAL_KEY] if rows else []
        # Deep models have dozens of binary layers: a legend entry each would cover the plot,
        # so layers are coloured by depth (a colour bar) and only a few are named.
        from matplotlib import cm, colormaps, colors

        cmap = colormaps["viridis"]
        norm = colors.Normalize(vmin=1, vmax=max(len(keys), 2))
        for depth, key in enumerate(keys, start=1):
            axes.plot(epochs, [r.get(key, np.nan) for r in rows], color=cmap(norm(depth)),
                      linewidth=1, marker="." if len(epochs) < 3 else None,
                      label=key[len("flip_ratio/"):] if len(keys) <= 8 else None)
        axes.plot(epochs, [r[TOTAL_KEY] for r in rows], label="total (all binary weights)",
                  color="black", linewidth=2.5, marker="o" if len(epochs) < 3 else None)
        if self.warn_threshold is not None:
            axes.axhline(self.warn_threshold, color="red", linestyle="--", linewidth=1,
                         label=f"warning threshold {self.warn_threshold:g}")
        if len(keys) > 8:
            bar = figure.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes)
            bar.set_label(f"binary layer, first ({keys[0][len('flip_ratio/'):]}) to last "
                          f"({keys[-1][len('flip_ratio/'):]})", fontsize="small")
        from matplotlib.ticker import MaxNLocator

        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel("fraction of latent weight signs flipped")
        axes.set_title(f"Sign flips per epoch ({len(keys)} binary layers)")
        axes.legend(fontsize="small", loc="upper right")
        axes.grid(alpha=0.3)
        figure.tight_layout()
        with files.atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
        return Path(path)

    def _maybe_warn(self) -> None:
        if self._warned or self.warn_threshold is None:
            return
        planned = (self.params or {}).get("epochs") or 0
        # Only epochs in the late part count: early training legitimately flips many signs.
        late = [
            r[TOTAL_KEY]
            for r in self.history
            if r["kind"] == "epoch" and r["epoch"] > self.warn_after * planned
        ]
        recent = late[-self.warn_patience:]
        if len(recent) < self.warn_patience or min(recent) <= self.warn_threshold:
            return
        self._warned = True
        message = (
            f"{min(recent):.3%} or more of the binary kernel signs flipped in each of the last "
            f"{self.warn_patience} epochs (threshold {self.warn_threshold:.3%}): the learning "
            "rate is probably too high for a binary network; lower it (Adam 1e-4 to 5e-4)."
        )
        log.warning(message)
        warnings.warn(message, UserWarning, stacklevel=2)

    def get_config(self) -> Dict[str, Any]:
        """The constructor arguments, JSON-serializable."""
        return {
            "run_dir": self.run_dir,
            "csv_path": self.csv_path,
            "log_dir": self.log_dir,
            "every_n_steps": self.every_n_steps,
            "plot_path": self.plot_path,
            "warn_threshold": self.warn_threshold,
            "warn_patience": self.warn_patience,
            "warn_after": self.warn_after,
            "resume": self.resume,
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "SignFlipTracker":
        return cls(**config)
