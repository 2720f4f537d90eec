"""Training throughput: our BNN against its float twin and larq-zoo's network with plain `fit`.

BinaryDenseNet28 on the bundled digits set resized to 64x64x1 (batch 32), the steady-state
training images/s of three ways to train it, in one run:

- **ours**: `bnn train binary-densenet28` (`bnn_keras.training.train`, with everything a run
  does: sign-flip tracking, history, epoch backups, validation);
- **float twin**: `bnn train binary-densenet28 --float`, the same run of the same network with
  ReLU where the input quantizers were and no kernel quantizer;
- **larq-zoo + fit**: larq-zoo's BinaryDenseNet28 (its public definition, as the test suite
  transcribes it in `tests/models/zoo_reference.py`: larq-zoo cannot be installed beside bnn, its
  protobuf pin) compiled with Adam and trained with a plain Keras `fit` on the same pipeline.

Each is timed as `bnn train` reports its rate: the training steps after the first (which traces
the step), validation excluded (`EpochTimer`). Each variant runs `--repeats` times, the variants
interleaved so that a slower minute of a shared machine does not fall on one of them; the table
gives the median with the spread, and the ratios of the medians. float32 always, and
`mixed_bfloat16` where the CPU has bfloat16 natively (AVX512-BF16/AMX; elsewhere TensorFlow
emulates it at a fraction of float32's speed, and `--precisions` can still ask for it).

`--profile VARIANT` prints instead where one variant's training step spends its time: the
TensorFlow ops by type, from the profiler's trace of `--steps` steps after one warm-up epoch.

    .venv/bin/python benchmarks/train_throughput.py                    # ~15 min on 2 cores
    .venv/bin/python benchmarks/train_throughput.py --repeats 1 --steps 10   # a quick look
    .venv/bin/python benchmarks/train_throughput.py --profile ours --precisions float32
"""

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bnn_keras  # noqa: E402,F401  (sets up tf-keras before TensorFlow is used)
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bnn_keras.training import TrainConfig, train  # noqa: E402
from bnn_keras.training import data as data_lib  # noqa: E402
from bnn_keras.training.precision import hardware_summary, native_bf16, precision_policy  # noqa: E402
from bnn_keras.training.run_callbacks import EpochTimer  # noqa: E402

MODEL = "binary-densenet28"
VARIANTS = ("ours", "float twin", "larq-zoo + fit")
# Op types of the profiler's trace that are not ops of the step (the host's and tf.data's).
_NOT_STEP_OPS = ("Process", "Run", "Iterator", "Dataset", "MakeIterator")


def run_config(args: argparse.Namespace, precision: str, float_copy: bool, seed: int,
               epochs: Optional[int] = None) -> TrainConfig:
    """The `bnn train` run of a variant."""
    return TrainConfig(model=MODEL, dataset="digits", image_size=args.size,
                       batch_size=args.batch_size, epochs=epochs or args.epochs,
                       steps_per_epoch=args.steps, precision=precision,
                       float_copy=float_copy, seed=seed)


def ours(args: argparse.Namespace, precision: str, float_copy: bool, seed: int) -> float:
    """Steady-state images/s of a `bnn train` run (its metrics' `images_per_s`)."""
    with tempfile.TemporaryDirectory() as folder:
        result = train(run_config(args, precision, float_copy, seed), None,
                       Path(folder) / "run", verbose=0)
    return float(result.metrics["images_per_s"])


def zoo_model(args: argparse.Namespace, splits: data_lib.DataSplits) -> tf.keras.Model:
    from tests.models.zoo_reference import zoo_binary_densenet28

    model = zoo_binary_densenet28((args.size, args.size, splits.image_shape[-1]),
                                  splits.num_classes)
    model.compile(tf.keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def zoo_pipeline(args: argparse.Namespace, splits: data_lib.DataSplits,
                 seed: int) -> tf.data.Dataset:
    """The training stream `bnn train` gives the same run (digits: no augmentation)."""
    return data_lib.make_pipeline(
        splits.train, batch_size=args.batch_size, normalization=splits.normalization,
        image_size=(args.size, args.size), training=True, seed=seed, first_epoch=0,
        steps_per_epoch=args.steps)


def zoo(args: argparse.Namespace, precision: str, splits: data_lib.DataSplits,
        seed: int) -> float:
    """Steady-state images/s of larq-zoo's network trained with a plain `fit`."""
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)
    with precision_policy(precision):
        model = zoo_model(args, splits)
    timer = EpochTimer()
    model.fit(zoo_pipeline(args, splits, seed), epochs=args.epochs,
              steps_per_epoch=args.steps, verbose=0, callbacks=[timer])
    return args.batch_size * len(timer.step_seconds) / sum(timer.step_seconds)


def measure(args: argparse.Namespace, precisions: Sequence[str]) -> Dict[tuple, List[float]]:
    splits = data_lib.load_dataset("digits")
    timings: Dict[tuple, List[float]] = collections.defaultdict(list)
    jobs = [(precision, seed, variant) for precision in precisions
            for seed in range(args.repeats) for variant in VARIANTS]
    for precision, seed, variant in tqdm(jobs, desc="runs", unit="run"):
        if variant == "larq-zoo + fit":
            value = zoo(args, precision, splits, seed)
        else:
            value = ours(args, precision, variant == "float twin", seed)
        timings[(precision, variant)].append(value)
    return timings


def print_table(timings: Dict[tuple, List[float]], precisions: Sequence[str]) -> None:
    print("| precision | variant | images/s, median (runs) | vs float twin | ours vs it |")
    print("|---|---|---|---|---|")
    for precision in precisions:
        medians = {v: statistics.median(timings[(precision, v)]) for v in VARIANTS}
        for variant in VARIANTS:
            runs = ", ".join(f"{value:.1f}" for value in timings[(precision, variant)])
            print(f"| {precision} | {variant} | {medians[variant]:.1f} ({runs}) | "
                  f"{medians[variant] / medians['float twin']:.2f}x | "
                  f"{medians['ours'] / medians[variant]:.2f}x |")
    if len(precisions) > 1:
        first, second = precisions[0], precisions[1]
        for variant in VARIANTS:
            ratio = (statistics.median(timings[(second, variant)])
                     / statistics.median(timings[(first, variant)]))
            print(f"\n{variant}: {second} {ratio:.2f}x {first}", end="")
        print()


def profile(args: argparse.Namespace, variant: str, precision: str) -> None:
    """Where `variant`'s training steps spend their time: the profiler's trace of its second
    epoch's steps (`--steps`; the first epoch traces the step), TensorFlow ops by type."""
    tracer = _SecondEpochTrace()
    with tempfile.TemporaryDirectory() as logdir:
        tracer.logdir = logdir
        if variant == "larq-zoo + fit":
            splits = data_lib.load_dataset("digits")
            with precision_policy(precision):
                model = zoo_model(args, splits)
            model.fit(zoo_pipeline(args, splits, seed=0), epochs=2, steps_per_epoch=args.steps,
                      verbose=0, callbacks=[tracer])
        else:
            # The run's own loop, callbacks and all.
            config = run_config(args, precision, variant == "float twin", 0, epochs=2)
            with tempfile.TemporaryDirectory() as folder:
                train(config, None, Path(folder) / "run", verbose=0, callbacks=[tracer])
        print_ops(_read_trace(logdir), args.steps, tracer.seconds)


class _SecondEpochTrace(tf.keras.callbacks.Callback):
    """Traces the training steps of `fit`'s second epoch (not its validation) into `logdir`,
    and times them."""

    logdir = ""
    seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == 1 and batch == 0:
            tf.profiler.experimental.start(self.logdir)
            self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == self.params["steps"] - 1:
            self.seconds = time.perf_counter() - self.started
            tf.profiler.experimental.stop()


def _read_trace(logdir: str):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(sorted(Path(logdir).rglob("*.xplane.pb"))[-1].read_bytes())
    return space


def print_ops(space, steps: int, seconds: float, top: int = 25) -> None:
    """The trace's TensorFlow ops on the CPU by type: ms per step and share of their time."""
    by_type: Dict[str, float] = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name.strip()
                # An op's event is named "NAME:TYPE"; a function's or the host's are not.
                if ":" not in name or name.startswith(("$", "__")):
                    continue
                op_type = name.rsplit(":", 1)[-1].strip()
                if not op_type.startswith("__") and not any(
                        word in op_type for word in _NOT_STEP_OPS):
                    by_type[op_type] += event.duration_ps / 1e9
    total = sum(by_type.values())
    print(f"{seconds / steps * 1000:.0f} ms per step (wall); ops by type (their time on all "
          "threads), ms per step:")
    print("| op | ms/step | share |")
    print("|---|---|---|")
    for op_type, ms in by_type.most_common(top):
        print(f"| {op_type} | {ms / steps:.1f} | {ms / total:.1%} |")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each variant.")
    parser.add_argument("--epochs", type=int, default=2,
                        help="Epochs of each run (its rate is read from all steps but the "
                             "first).")
    parser.add_argument("--steps", type=int, default=30, help="Training steps per epoch.")
    parser.add_argument("--size", type=int, default=64, help="Image side length.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precisions", default=None,
                        help="Comma-separated [default: float32, and mixed_bfloat16 where "
                             "native].")
    parser.add_argument("--profile", choices=VARIANTS, default=None,
                        help="Print where one variant's step spends its time instead.")
    args = parser.parse_args(argv)
    precisions = (args.precisions.split(",") if args.precisions else
                  ["float32", *(["mixed_bfloat16"] if native_bf16() else [])])
    load_before = os.getloadavg()[0]
    print(f"{hardware_summary()}; {MODEL} at {args.size}x{args.size}, batch {args.batch_size}, "
          f"{args.epochs} epochs of {args.steps} steps per run", flush=True)
    if args.profile:
        profile(args, args.profile, precisions[0])
        return
    started = time.perf_counter()
    timings = measure(args, precisions)
    print(f"\n{args.repeats} runs of each, {(time.perf_counter() - started) / 60:.1f} min; "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}\n")
    print_table(timings, precisions)


if __name__ == "__main__":
    main()
