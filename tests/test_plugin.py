"""`import bnn_keras` is the Keras plugin only: light, and every custom object registered."""

import json
import subprocess
import sys

# Modules of the training application and the data sets, which the plugin must not load.
TRAINING_APP = ("bnn_keras.training", "bnn_keras.data", "bnn_keras.recipes", "bnn_keras.tricks",
                "bnn_keras.distribute", "bnn_keras.precision", "bnn_keras.baselines",
                "tensorflow_datasets", "sklearn", "models", "convert")
CUSTOM_OBJECTS = ("bnn_keras>SteSign", "bnn_keras>ApproxSign", "bnn_keras>SignSwish",
                  "bnn_keras>ScaledQuantConv2D", "bnn_keras>MultiBaseQuantConv2D",
                  "bnn_keras>LearnableScale", "bnn_keras>FloatActivation",
                  "bnn_keras>WarmupDecay", "bnn_keras>SmoothedSparseCategoricalCrossentropy",
                  "bnn_keras>Bipolar", "bnn_keras>BlurKernel", "bnn_keras>SignFlipTracker")


def test_import_bnn_keras_loads_no_training_code_and_registers_every_object():
    code = (
        "import json, sys; import bnn_keras; import tensorflow as tf; "
        "objs = tf.keras.utils.get_custom_objects(); "
        f"print(json.dumps({{'loaded': [m for m in {TRAINING_APP!r} if any("
        "k == m or k.startswith(m + '.') for k in sys.modules)], "
        f"'missing': [o for o in {CUSTOM_OBJECTS!r} if o not in objs]}}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {"loaded": [], "missing": []}
