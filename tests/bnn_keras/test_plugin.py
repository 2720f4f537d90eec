"""`import bnn_keras` is the Keras plugin only: light, and every custom object registered."""

import json
import subprocess
import sys

# Modules of the training application and the data sets, which the plugin must not load.
# `bnn_keras.training` covers all of it (data, recipes, tricks, precision, ...).
TRAINING_APP = ("bnn_keras.training", "tensorflow_datasets", "sklearn", "models", "convert")
CUSTOM_OBJECTS = ("bnn_keras>SteSign", "bnn_keras>ApproxSign", "bnn_keras>SignSwish",
                  "bnn_keras>ScaledQuantConv2D", "bnn_keras>MultiBaseQuantConv2D",
                  "bnn_keras>LearnableScale", "bnn_keras>FloatActivation",
                  "bnn_keras>WarmupDecay", "bnn_keras>SmoothedSparseCategoricalCrossentropy",
                  "bnn_keras>Bipolar", "bnn_keras>BlurKernel", "bnn_keras>SignFlipTracker",
                  "bnn_keras>RSign", "bnn_keras>RPReLU", "bnn_keras>LearnedRescale",
                  "bnn_keras>LayerScaledSign")


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


def test_old_import_paths_of_the_training_app_give_the_new_modules_with_a_warning():
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning); import bnn_keras\n"
        "try:\n    import bnn_keras.data\nexcept DeprecationWarning as w:\n    print(w)\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "import bnn_keras.data, bnn_keras.training.data\n"
        "print(bnn_keras.data is bnn_keras.training.data, bnn_keras.tricks.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-2:] == [
        "bnn_keras.data moved to bnn_keras.training.data in bnn 0.3.0; "
        "import bnn_keras.training.data",
        "True bnn_keras.training.tricks",
    ]
