"""One worker of the two-process MultiWorkerMirroredStrategy test (test_distribute.py, beside it).

Usage: TF_CONFIG=... python _multiworker_worker.py RUN_DIR WEIGHTS_NPZ [OPTIMIZER]

Trains a tiny larq model for a few steps on data every worker generates identically, saves the
model the standard Keras way (chief into RUN_DIR, others into a temporary folder that is removed
afterwards) and dumps its final weights to WEIGHTS_NPZ for the test to compare.
"""

import json
import sys
import time

STARTED = time.perf_counter()
from pathlib import Path

import bnn_keras  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from bnn_keras.training import distribute

# Must come before any other TensorFlow op.
strategy = distribute.make_strategy("multi-worker")

import larq as lq  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bnn_keras.training import recipes# noqa: E402
from tensorflow.python.autograph.core import config as autograph_config  # noqa: E402

# TF 2.16 exempts the `keras` package from AutoGraph conversion but not `tf_keras`, so the first
# `fit` step converts ~1000 tf_keras functions (40 s of a loaded 2-core machine, 2 s without);
# Keras' code does not need conversion, exactly as before the split.
autograph_config.CONVERSION_RULES = (
    autograph_config.DoNotConvert("tf_keras"),
    *autograph_config.CONVERSION_RULES,
)

GLOBAL_BATCH = 8
STEPS = 4


def tiny_model() -> tf.keras.Model:
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", name="fp_conv")(inputs)
    x = tf.keras.layers.BatchNormalization(name="bn1")(x)
    x = lq.layers.QuantConv2D(
        8, 3, padding="same", use_bias=False, input_quantizer="ste_sign",
        kernel_quantizer="ste_sign", kernel_constraint="weight_clip", name="bconv",
    )(x)
    x = tf.keras.layers.BatchNormalization(name="bn2")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(3, activation="softmax", name="head")(x)
    return tf.keras.Model(inputs, outputs, name="tiny_bnn")


def main() -> None:
    run_dir, weights_path = Path(sys.argv[1]), Path(sys.argv[2])
    optimizer = sys.argv[3] if len(sys.argv) > 3 else "adam"
    rng = np.random.RandomState(0)
    images = rng.randn(GLOBAL_BATCH * STEPS, 8, 8, 1).astype("float32")
    labels = (np.arange(GLOBAL_BATCH * STEPS) % 3).astype("int64")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(GLOBAL_BATCH).repeat()

    recipe = recipes.Recipe(
        optimizer=optimizer, learning_rate=1e-2, schedule="cosine", warmup_epochs=0.5,
        label_smoothing=0.1, weight_decay=1e-4, bop_threshold=0.0, bop_gamma=0.5,
    )
    tf.keras.utils.set_random_seed(0)  # identical initial weights on every worker
    with strategy.scope():
        model = tiny_model()
        recipes.add_weight_decay(model, recipe.weight_decay)
        model.compile(
            optimizer=recipes.build_optimizer(recipe, model, steps_per_epoch=STEPS, epochs=1),
            loss=recipes.loss(recipe),
        )
    initial = [w.copy() for w in model.get_weights()]
    built = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=STEPS, verbose=0)
    fitted = time.perf_counter()

    # Every worker saves (collectives), only the chief's copy is kept.
    out = distribute.output_dir(run_dir, strategy)
    model.save(out / "model.keras")
    distribute.cleanup_output_dir(out, run_dir, strategy)

    names = [w.name for w in model.weights]
    np.savez(
        weights_path,
        **{f"w{i}": w for i, w in enumerate(model.get_weights())},
        **{f"init{i}": w for i, w in enumerate(initial)},
    )
    weights_path.with_suffix(".json").write_text(json.dumps({
        "names": names,
        "is_chief": distribute.is_chief(strategy),
        "workers": distribute.worker_count(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "output_dir": str(out),
        "iterations": int(_iterations(model.optimizer)),
        # Seconds to build, to fit and to save: where the test's time goes on a busy machine.
        "timing_s": [round(t - STARTED, 1) for t in (built, fitted, time.perf_counter())],
    }))


def _iterations(optimizer) -> int:
    # larq's CaseOptimizer counts nothing itself; its inner optimizers do.
    inner = getattr(optimizer, "default", None)
    return (inner or optimizer).iterations.numpy()


if __name__ == "__main__":
    main()
