"""`import bnn_keras` must bind tf.keras to tf-keras 2, or fail with one clear error."""

import os
import subprocess
import sys


def _python(code: str, **env):
    environment = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300
    )


def test_import_sets_legacy_keras_before_tensorflow():
    result = _python(
        "import bnn_keras, os, tensorflow as tf\n"
        "print(os.environ['TF_USE_LEGACY_KERAS'], tf.keras.layers.Layer.__module__.split('.')[0])"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "tf_keras"]


def test_keras3_already_bound_raises_one_clear_error():
    result = _python("import tensorflow as tf\ntf.keras.layers.Layer\nimport bnn_keras")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("bnn_keras.errors.KerasVersionError: tf.keras is Keras 3")
    assert "TF_USE_LEGACY_KERAS=1" in last_line


def test_keras_version_error_is_an_import_error_and_a_bnn_error():
    from bnn_keras.errors import BnnError, KerasVersionError

    assert issubclass(KerasVersionError, ImportError)
    assert issubclass(KerasVersionError, BnnError)
