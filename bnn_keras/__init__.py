"""bnn_keras: Keras building blocks for binarized neural networks, on top of larq.

Importing this package sets `TF_USE_LEGACY_KERAS=1` before TensorFlow is imported, or re-routes
a TensorFlow imported before it (larq and Larq Compute Engine need tf-keras 2.16, not Keras 3),
and registers every custom object with Keras, so `tf.keras.models.load_model(path)` needs no
`custom_objects` (it also makes tf-keras read a `.keras` file's weights in one pass, which
tf-keras 2.16 re-reads from the start at each seek: `bnn_keras._env`).
"""

from bnn_keras._env import ensure_legacy_keras, keras_version_error

ensure_legacy_keras()

try:
    import larq  # noqa: E402,F401  (registers larq's layers and quantizers with Keras)
except AttributeError as exc:  # larq built its classes on Keras 3 stubs
    raise keras_version_error(f"larq failed on Keras 3: {exc}") from exc

from bnn_keras.errors import BnnError, KerasVersionError  # noqa: E402


def _installed_version() -> str:
    """The version setup.cfg gives, as installed (one source of truth for it)."""
    from importlib import metadata

    try:
        return metadata.version("bnn")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()

__all__ = ["BnnError", "KerasVersionError", "__version__"]

# Importing the plugin modules registers their objects with Keras (package "bnn_keras"). The
# training application (`bnn_keras.training`: data, recipes, tricks, ...) is not imported here:
# `import bnn_keras` stays as light as `import larq`.
from bnn_keras import (  # noqa: E402,F401
    callbacks,
    constraints,
    initializers,
    layers,
    losses,
    optimizers,
    quantizers,
    regularizers,
    schedules,
)

# `bnn_keras.binarize(model)`: a float Keras CNN rewritten into a BNN.
from bnn_keras.binarization import binarize  # noqa: E402

__all__ += ["binarize"]

# The training application's modules lived here until 0.3.0; their old paths still import.
from bnn_keras import _moved  # noqa: E402

_moved.install()


def __getattr__(name: str):
    if f"bnn_keras.{name}" in _moved.MOVED_MODULES:  # `bnn_keras.data` without importing it
        return _moved.import_moved(f"bnn_keras.{name}")
    raise AttributeError(f"module 'bnn_keras' has no attribute {name!r}")
