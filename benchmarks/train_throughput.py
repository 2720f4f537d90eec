"""Training throughput of Keras `fit` for a BNN: precision policy, input pipeline, float copy.

For each input size (32x32 at batch 64, 96x96 at batch 16) it times `fit` on binary-densenet28
for these variants, each measured after warm-up steps inside the same `fit` call (so tracing,
oneDNN kernel selection and the input pipeline's start-up are excluded):

- binary, float32, tuned pipeline (the baseline every ratio is relative to)
- binary, mixed_bfloat16, tuned pipeline
- binary, float32 / mixed_bfloat16, untuned pipeline (`make_pipeline(..., tuned=False)`)
- float copy (`bnn_keras.training.baselines.float_equivalent`), float32 / mixed_bfloat16, tuned

The mixed_bfloat16 rows are timed only where bfloat16 is native (AVX512-BF16/AMX CPU, or a
GPU); elsewhere TensorFlow emulates it at a fraction of float32's speed, which is not a policy
anyone would train with (`--bf16 always` times it anyway).

Data: the bundled digits set (offline), resized on the fly to the model size with crop + flip
augmentation, so the input pipeline does per-example work as in real training. Prints one
markdown table. Timings are wall-clock on a possibly shared machine: the load average is printed.

    python benchmarks/train_throughput.py           # ~10-15 min on 2 cores with native bf16
    python benchmarks/train_throughput.py --quick   # 32x32 only, ~2-3 min sanity run
"""

import argparse
import os
import time
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import bnn_keras  # noqa: E402,F401  (sets up tf-keras before TensorFlow is used)
import models  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bnn_keras.training import data as data_lib# noqa: E402
from bnn_keras.training.baselines import float_equivalent  # noqa: E402
from bnn_keras.training.precision import hardware_summary, native_bf16, precision_policy  # noqa: E402

MODEL = "binary-densenet28"
SIZES = ((32, 64), (96, 16))  # (side, batch size)
# (network is binary?, policy, pipelines timed: tuned and/or untuned)
MODELS = (
    (True, "float32", (True, False)),
    (True, "mixed_bfloat16", (True, False)),
    (False, "float32", (True,)),
    (False, "mixed_bfloat16", (True,)),
)
BASELINE = (True, "float32", True)


def _label(binary: bool, policy: str, tuned: bool) -> str:
    return f"{'binary' if binary else 'float copy'}, {policy}, {'tuned' if tuned else 'untuned'}"


class StepTimer(tf.keras.callbacks.Callback):
    """Records the time at which each training batch ends."""

    def __init__(self):
        super().__init__()
        self.ends: List[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def measure(
    splits: data_lib.DataSplits, side: int, batch_size: int, binary: bool, policy: str,
    pipelines: Sequence[bool], warmup: int, steps: int,
) -> Dict[bool, float]:
    """Images per second of `fit` over `steps` batches after `warmup` batches, per pipeline.

    One model per (network, policy): the pipelines (`tuned` True/False) are timed one after the
    other with the same compiled model, which saves a rebuild and a re-trace per variant.
    """
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    with precision_policy(policy):
        model = models.create_model(
            MODEL, input_shape=(side, side, splits.image_shape[-1]), num_classes=splits.num_classes
        )
        if not binary:
            model = float_equivalent(model, copy_weights=False)
    model.compile(tf.keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    results = {}
    for tuned in pipelines:
        ds = data_lib.make_pipeline(
            splits.train.repeat(), batch_size=batch_size, normalization=splits.normalization,
            image_size=(side, side), training=True, augmentation="crop_flip", tuned=tuned,
        )
        timer = StepTimer()
        model.fit(ds, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer])
        results[tuned] = steps * batch_size / (timer.ends[-1] - timer.ends[warmup - 1])
    return results


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="32x32 only, few steps: a ~2-3 minute sanity run on an idle machine")
    parser.add_argument("--warmup", type=int, default=None,
                        help="warm-up batches (default 5, quick 2)")
    parser.add_argument("--bf16", choices=("auto", "always", "never"), default="auto",
                        help="time the mixed_bfloat16 rows: auto = only where bf16 is native")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed batches (default 30 at 32x32 / 40 at 96x96; quick 4)")
    args = parser.parse_args(argv)
    warmup = args.warmup or (2 if args.quick else 5)

    splits = data_lib.load_dataset("digits")
    sizes = SIZES[:1] if args.quick else SIZES
    with_bf16 = args.bf16 == "always" or (args.bf16 == "auto" and native_bf16())
    variants = [m for m in MODELS if with_bf16 or m[1] != "mixed_bfloat16"]
    results: Dict[tuple, float] = {}
    jobs = [(side, batch, m) for side, batch in sizes for m in variants]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    for side, batch, (binary, policy, pipelines) in tqdm(jobs, desc="models", unit="model"):
        steps = args.steps or (4 if args.quick else (30 if side == 32 else 40))
        measured = measure(splits, side, batch, binary, policy, pipelines, warmup, steps)
        for tuned, value in measured.items():
            results[(side, binary, policy, tuned)] = value
    minutes = (time.perf_counter() - started) / 60

    print(f"\n{MODEL} training throughput (Keras fit, images/s; ratio vs binary/float32/tuned at "
          f"the same size, same run). {warmup} warm-up + "
          f"{args.steps or ('4' if args.quick else '30/40')} timed steps; load average "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}; {hardware_summary()}; "
          f"{minutes:.1f} min.\n")
    if not with_bf16:
        print("mixed_bfloat16 rows left out: bfloat16 is emulated on this machine "
              "(--bf16 always times them).\n")
    print("| variant | " + " | ".join(f"{s}x{s}, batch {b}" for s, b in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for binary, policy, pipelines in variants:
        for tuned in pipelines:
            cells = []
            for side, _ in sizes:
                value, base = results[(side, binary, policy, tuned)], results[(side, *BASELINE)]
                cells.append(f"{value:.1f} img/s ({value / base:.2f}x)")
            print(f"| {_label(binary, policy, tuned)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
