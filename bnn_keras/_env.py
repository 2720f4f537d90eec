"""Makes TensorFlow resolve `tf.keras` to tf-keras (Keras 2) before anyone imports it.

larq 0.14 and Larq Compute Engine 0.16 are written against Keras 2. TensorFlow 2.16 resolves
`tf.keras` to Keras 3 unless `TF_USE_LEGACY_KERAS=1` is set before `tf.keras` is first touched,
so every package of ours imports this module before it imports TensorFlow. A TensorFlow that was
imported first (`import tensorflow as tf; import bnn_keras`, the notebook order) is re-routed
too, as long as nothing has used `tf.keras` yet.
"""

import io
import os
import sys

from bnn_keras.errors import KerasVersionError

_FIX = (
    "set TF_USE_LEGACY_KERAS=1 in the environment, or `import bnn_keras` before anything uses "
    "tf.keras (importing tensorflow first is fine), so that tf.keras is tf-keras 2.16"
)


def ensure_legacy_keras() -> None:
    """Sets `TF_USE_LEGACY_KERAS=1` and checks that `tf.keras` is Keras 2.

    Raises:
        KerasVersionError: `tf.keras` was already bound to Keras 3 in this process, which
            larq and LCE cannot use.
    """
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    # TensorFlow's C++ start-up chatter (CUDA stubs and spurious cuFFT/cuDNN "errors" on CPU-only
    # machines) buries our output; a user
    # who wants it sets TF_CPP_MIN_LOG_LEVEL themselves.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf_was_imported = "tensorflow" in sys.modules
    import tensorflow as tf  # noqa: E402  (must follow the environment variable)

    if tf_was_imported:
        _route_tensorflow_keras_to_tf_keras(tf)
    # tf.keras is a lazy loader; touching a class resolves it to tf_keras or Keras 3 for good.
    implementation = tf.keras.layers.Layer.__module__
    if not implementation.startswith("tf_keras"):
        version = getattr(tf.keras, "__version__", "3")
        how = "tensorflow.keras was used before bnn_keras was imported" if tf_was_imported else (
            "Keras 3 was selected")
        raise KerasVersionError(
            f"tf.keras is Keras {version} ({how}); larq and LCE need Keras 2: {_FIX}."
        )
    _skip_autograph_for_tf_keras()
    _read_keras_weights_from_memory()


def keras_version_error(how: str) -> KerasVersionError:
    """Our KerasVersionError, with the one-line fix, for a Keras 3 found some other way."""
    return KerasVersionError(f"tf.keras is Keras 3 ({how}); larq and LCE need Keras 2: {_FIX}.")


def _route_tensorflow_keras_to_tf_keras(tf) -> None:
    """Makes `import tensorflow.keras.X` find tf-keras when TensorFlow was imported first.

    `import tensorflow` without TF_USE_LEGACY_KERAS puts Keras 3's API folder first on
    `tensorflow.__path__`, so larq's `from tensorflow.keras.optimizers.legacy import Optimizer`
    gets a Keras 3 stub (and fails with an AttributeError), even though `tf.keras` itself is
    still unresolved and will honour the variable. Putting tf-keras' API folder first, as
    TensorFlow does when the variable is set at its import, lets the notebook order
    `import tensorflow as tf; import bnn_keras` work.

    Raises:
        KerasVersionError: a `tensorflow.keras` module was already imported from Keras 3.
    """
    bound = sorted(name for name in sys.modules
                   if name == "tensorflow.keras" or name.startswith("tensorflow.keras."))
    if bound and not all(_is_tf_keras_module(sys.modules[name]) for name in bound):
        raise keras_version_error(f"{bound[0]} was imported before bnn_keras")
    try:
        from tensorflow.python.tools import module_util
    except ImportError:  # a TensorFlow without it: leave the path, the check below decides
        return
    tf_keras_dir = module_util.get_parent_dir_for_name("tf_keras.api._v2.keras")
    keras3_dir = module_util.get_parent_dir_for_name("keras.api._v2.keras")
    path = getattr(tf, "__path__", None)
    if tf_keras_dir is None or not isinstance(path, list) or path[:1] == [tf_keras_dir]:
        return
    path[:] = [tf_keras_dir] + [p for p in path if p not in (tf_keras_dir, keras3_dir)]


def _is_tf_keras_module(module) -> bool:
    origin = getattr(module, "__file__", None) or ""
    return f"{os.sep}tf_keras{os.sep}" in origin


def _skip_autograph_for_tf_keras() -> None:
    """Tells AutoGraph not to convert tf_keras' own code, as TensorFlow already does for `keras`.

    TensorFlow 2.16 lists `keras` among the packages AutoGraph leaves alone but not `tf_keras`,
    so the first `fit` step converts ~1,000 tf_keras functions: ~40 s instead of ~2 s here,
    with identical results (tf_keras' code is already graph-safe). The rule list is private
    API, so a TensorFlow without it is left as it is.
    """
    try:
        from tensorflow.python.autograph.core import config
        from tensorflow.python.autograph.core.config_lib import DoNotConvert
    except ImportError:
        return
    rules = getattr(config, "CONVERSION_RULES", None)
    if isinstance(rules, tuple) and not any(
        isinstance(r, DoNotConvert) and getattr(r, "_prefix", None) == "tf_keras" for r in rules
    ):
        config.CONVERSION_RULES = (DoNotConvert("tf_keras"),) + rules


def _read_keras_weights_from_memory() -> None:
    """Makes tf-keras read a `.keras` file's weights from memory instead of seeking in the zip.

    tf-keras 2.16 hands h5py the weights member of the `.keras` zip as a `zipfile` stream. Each
    backward seek of h5py re-reads that stream from its start (Python's `ZipExtFile.seek`), so
    loading costs time quadratic in the model's size: about half of a 20-50 MB model's
    `load_model` here. Keras 3 fixed it by reading the member out first (keras-team/keras#19793,
    #19852); tf-keras did not. This does the same for reading only: the member is read into a
    `BytesIO` once (the model's size in memory, for the duration of the load), and writing is
    left as it is. Private API, so a tf-keras without it is left as it is.
    """
    try:
        from tf_keras.src.saving import saving_lib
    except ImportError:
        return
    store = getattr(saving_lib, "H5IOStore", None)
    if store is None or getattr(store, "_bnn_reads_from_memory", False):
        return

    class InMemoryH5IOStore(store):
        _bnn_reads_from_memory = True

        def __init__(self, root_path, archive=None, mode="r"):
            if archive is None or mode != "r":
                super().__init__(root_path, archive=archive, mode=mode)
                return
            import h5py

            self.root_path, self.mode, self.archive = root_path, mode, archive
            self.io_file = io.BytesIO(archive.read(root_path))
            self.h5_file = h5py.File(self.io_file, mode="r")

    InMemoryH5IOStore.__name__ = InMemoryH5IOStore.__qualname__ = store.__name__
    InMemoryH5IOStore.__module__ = store.__module__
    saving_lib.H5IOStore = InMemoryH5IOStore
