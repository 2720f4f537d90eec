"""Fashion-MNIST benchmark: a registered BNN on the real data vs its float twin, same time budget.

Reads the IDX files of Debian's `dataset-fashion-mnist` package (installed with apt-get when
missing), trains the BNN with `bnn_keras.training.train` (so the run folder is a normal one that
`bnn convert` / `bnn evaluate` accept), then trains `bnn_keras.training.baselines.float_equivalent` of
the same network, from scratch, with the same options and stopped when it has used the BNN's
wall time. Prints one markdown table.

    python benchmarks/fashion_mnist.py                       # the issue-5 configuration
    python benchmarks/fashion_mnist.py --epochs 1 --no-float  # a quick look
    python benchmarks/fashion_mnist.py --bnn-run DIR/bnn --output DIR2  # float side only
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import bnn_keras  # noqa: E402,F401  (sets up tf-keras before TensorFlow is used)
import models  # noqa: E402
import tensorflow as tf  # noqa: E402
from bnn_keras.training import data as data_lib# noqa: E402
from bnn_keras.training.baselines import float_equivalent  # noqa: E402
from bnn_keras.model_stats import model_summary  # noqa: E402
from bnn_keras.training.precision import hardware_summary, resolve_precision  # noqa: E402
from bnn_keras.training import TrainConfig, train  # noqa: E402

# Chosen by the experiments in benchmarks/README.md to fit 30 minutes on 2 cores in float32
# (AVX2, no native bfloat16): QuickNet at a quarter of its ImageNet width (27 M MACs at 28x28,
# ~300 images/s there) for 8 epochs of batch 256. Its ReLU on every binary path learns more per
# epoch than BinaryResNetE18 of the same cost, which saturates near 90.5% at that width.
DEFAULT_MODEL = "quicknet"
DEFAULT_OPTIONS = {"section_filters": [16, 32, 64, 128]}
DEFAULT_EPOCHS = 8


def ensure_fashion_mnist(folder: str) -> None:
    """Installs Debian's dataset-fashion-mnist with apt-get when its IDX files are missing."""
    if data_lib.has_idx_files(folder):
        return
    print(f"Fashion-MNIST IDX files not found in {folder}; installing the Debian package "
          "dataset-fashion-mnist (apt-get update && apt-get install -y dataset-fashion-mnist)...")
    try:
        subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "dataset-fashion-mnist"], check=True,
                       stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"Could not install dataset-fashion-mnist ({exc}). Install it as root, or pass "
                 "--data-dir with the four Fashion-MNIST IDX files.")
    if not data_lib.has_idx_files(folder):
        sys.exit(f"dataset-fashion-mnist is installed but {folder} has no IDX files; "
                 "pass --data-dir.")


class TimeCosineDecay(tf.keras.callbacks.Callback):
    """Cosine decay of the learning rate to 0 over `seconds` of wall time (the float baseline).

    The BNN uses TrainConfig's per-step cosine schedule; the float copy runs until the BNN's
    wall time is used up, so its rate decays over that time instead of over a step count.
    """

    def __init__(self, base_rate: float, seconds: float):
        super().__init__()
        self.base_rate, self.seconds, self.started = base_rate, seconds, 0.0

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        progress = min(1.0, (time.perf_counter() - self.started) / self.seconds)
        self.model.optimizer.learning_rate.assign(
            self.base_rate * 0.5 * (1 + math.cos(math.pi * progress))
        )


class TimeBudget(tf.keras.callbacks.Callback):
    """Stops `fit` once `seconds` of training have passed, and counts the images trained on."""

    def __init__(self, seconds: Optional[float], batch_size: int):
        super().__init__()
        self.seconds, self.batch_size = seconds, batch_size
        self.started = 0.0
        self.images = 0

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.images += self.batch_size
        if self.seconds is not None and time.perf_counter() - self.started >= self.seconds:
            self.model.stop_training = True


def run(args: argparse.Namespace, *, binary: bool, budget: Optional[float]) -> Dict:
    options = json.loads(args.options)
    # Under a time budget, epochs is only an upper bound: the budget stops the run.
    epochs = args.epochs if budget is None else args.epochs * 20
    config = TrainConfig(
        model=args.model, model_options=options, dataset="fashion_mnist",
        data_dir=args.data_dir, image_size=28, epochs=epochs, batch_size=args.batch_size,
        learning_rate=args.lr, schedule="cosine" if budget is None else "constant",
        steps_per_epoch=args.steps_per_epoch, seed=args.seed, precision=args.precision,
        augment=False,
        # Validation in fit is monitoring only (the test accuracy is measured once at the end)
        # and a pass over the 10k test images costs ~10% of an epoch: by default only after
        # the last epoch, which a time-budgeted run never reaches.
        validation_freq=args.validation_freq or epochs,
    )
    splits = data_lib.load_dataset("fashion_mnist", args.data_dir)

    def build(input_shape, num_classes):
        model = models.create_model(
            args.model, input_shape=input_shape, num_classes=num_classes, **options
        )
        if binary:
            return model
        return float_equivalent(model, copy_weights=False, input_activation=args.input_activation)

    timer = TimeBudget(budget, args.batch_size)
    run_dir = Path(args.output) / ("bnn" if binary else "float")
    extra = [timer] if budget is None else [TimeCosineDecay(args.lr, budget), timer]
    result = train(config, build, run_dir, splits=splits, verbose=2, callbacks=extra)
    stats = model_summary(result.model)
    wall = result.metrics["wall_time_s"]
    return {
        "network": f"{args.model} ({'binary' if binary else 'float copy'})",
        "test_accuracy": result.metrics["test_accuracy"],
        "wall_time_s": wall,
        # Counted by the callback: the float run may stop mid-epoch on the time budget.
        "images_per_s": timer.images / wall,
        "epochs": timer.images / splits.num_train,
        "binary_mac_fraction": stats.binary_mac_fraction,
        "params": stats.total_params,
        "run_dir": str(run_dir),
    }


def finished_run(run_dir: str) -> Dict:
    """The table row of a finished BNN run folder (to add a float baseline to it later)."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    config = json.loads((Path(run_dir) / "config.json").read_text())
    model = tf.keras.models.load_model(Path(run_dir) / "model.keras")
    stats = model_summary(model)
    return {
        "network": f"{config['model']} (binary)",
        "test_accuracy": metrics["test_accuracy"],
        "wall_time_s": metrics["wall_time_s"],
        # Same basis as `run`: images trained on / fit wall time (validation included).
        "images_per_s": config["num_train"] * metrics["epochs"] / metrics["wall_time_s"],
        "epochs": metrics["epochs"],
        "binary_mac_fraction": stats.binary_mac_fraction,
        "params": stats.total_params,
        "run_dir": str(run_dir),
    }


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="registry name")
    parser.add_argument("--options", default=None,
                        help=f"model overrides as JSON [default: {json.dumps(DEFAULT_OPTIONS)} "
                             f"for {DEFAULT_MODEL}, else none]")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam peak rate (cosine decay)")
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--validation-freq", type=int, default=None,
                        help="validate on the test set every N epochs [default: after the last]")
    parser.add_argument("--precision", default="auto",
                        help="auto (mixed_bfloat16 where bf16 is native, else float32), "
                             "mixed_bfloat16 or float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=data_lib.DEBIAN_FASHION_MNIST_DIR)
    parser.add_argument("--output", default=f"/tmp/bnn-fashion-mnist-{int(time.time())}",
                        help="folder for the two run folders (bnn/, float/)")
    parser.add_argument("--no-float", action="store_true", help="skip the float baseline")
    parser.add_argument("--input-activation", default="relu",
                        help="activation of the float copy where the BNN had input quantizers "
                             "(see float_equivalent); 'none' for none")
    parser.add_argument("--bnn-run", default=None,
                        help="reuse this finished BNN run folder instead of training the BNN")
    args = parser.parse_args(argv)
    if args.options is None:
        args.options = json.dumps(DEFAULT_OPTIONS if args.model == DEFAULT_MODEL else {})
    if args.input_activation.lower() == "none":
        args.input_activation = None

    ensure_fashion_mnist(args.data_dir)
    rows = [finished_run(args.bnn_run) if args.bnn_run else run(args, binary=True, budget=None)]
    print(json.dumps(rows[-1]), flush=True)
    if not args.no_float:
        rows.append(run(args, binary=False, budget=rows[0]["wall_time_s"]))
        print(json.dumps(rows[-1]), flush=True)

    print(f"\nFashion-MNIST (real, 60k/10k), 28x28, batch {args.batch_size}, "
          f"{resolve_precision(args.precision)} on {hardware_summary()}, "
          f"Adam {args.lr} cosine, options {args.options}; float copy: input activation "
          f"{args.input_activation}, trained from scratch for the BNN's wall time\n")
    print("| network | test acc. | wall time | images/s | epochs | binary-MAC fraction | params |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['network']} | {r['test_accuracy']:.4f} | {r['wall_time_s'] / 60:.1f} min | "
              f"{r['images_per_s']:.0f} | {r['epochs']:.2f} | {r['binary_mac_fraction']:.3f} | "
              f"{r['params']:,} |")
    print(f"\nRun folders: {', '.join(r['run_dir'] for r in rows)}")


if __name__ == "__main__":
    main()
