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


def test_keras_file_weights_are_read_once_not_sought_back_and_forth(tmp_path, monkeypatch):
    """tf-keras 2.16 lets h5py seek in the `.keras` zip's weights stream, and each backward
    seek re-reads the stream from its start. With bnn_keras imported, the member is read once,
    and the weights load the same."""
    import zipfile

    import numpy as np
    import tensorflow as tf

    import bnn_keras  # noqa: F401
    from tests.conftest import tiny_lce_model

    model = tiny_lce_model()
    path = tmp_path / "model.keras"
    model.save(path)
    rewinds = []
    seek = zipfile.ZipExtFile.seek

    def counting_seek(self, offset, whence=0):
        before = self.tell()
        position = seek(self, offset, whence)
        if position < before:
            rewinds.append((before, position))
        return position

    monkeypatch.setattr(zipfile.ZipExtFile, "seek", counting_seek)
    loaded = tf.keras.models.load_model(path)
    assert rewinds == []
    for saved, read in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(saved, read)

    # Without the fix (tf-keras' own store), the same load rewinds the stream.
    from tf_keras.src.saving import saving_lib

    monkeypatch.setattr(saving_lib, "H5IOStore", saving_lib.H5IOStore.__mro__[1])
    tf.keras.models.load_model(path)
    assert rewinds
