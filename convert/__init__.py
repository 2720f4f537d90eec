"""Keras -> TFLite flatbuffer through Larq Compute Engine, verification, inspection, runtime."""

import bnn_keras  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
