"""A run of a user's float model binarized (`bnn binarize`): its model and its two steps.

The run's `model` is `BINARIZED`, its `teacher` the float model (a Keras model file, or the run
folder of `bnn train MODEL --float`), and its `model_options` the rewrite's options
(`bnn_keras.binarization.BinarizeOptions`). The model is `bnn_keras.binarize` of the teacher:
the teacher is copied into the run folder with its sha256 when the run starts (`run_inputs`),
so a resume rebuilds the BNN from that copy, never from the original path. It trains in
ReActNet's two steps (`STAGED_RECIPE`, one staged run: `bnn_keras.training.stages`): binary
activations with real weights first, then binary weights from step 1's, both learning the
float model's softmax with ReActNet's distribution loss.

References:
    - ReActNet: https://arxiv.org/abs/2003.03488 (two-step training, distributional loss)
"""

from typing import Any, Callable, Mapping, Optional, Tuple

import tensorflow as tf

from bnn_keras.errors import BnnError
from models.recipes import PaperRecipe, RecipeStage, StagedRecipe, USER_TEACHER

# The `model` of a binarized run: not a registry name (`bnn models` does not list it).
BINARIZED = "binarized"

# ReActNet's step recipe (Adam at 5e-4, decayed linearly to 0, weight decay 1e-5 on the real
# kernels in step 1 and none in step 2) with a length for small data sets: 10 epochs of batch
# 64 per step instead of 256 of batch 256 on ImageNet (bnn's default length and batch; the
# user's `epochs` and `batch_size` apply to each step).
_SOURCE = ("ReActNet (arXiv 2003.03488) Section 4.1 two-step training, its step recipe "
           "(github.com/liuzechun/ReActNet mobilenet/1_step1/run.sh) at bnn's default length "
           "for small data sets")
_STEP1 = PaperRecipe(source=_SOURCE, values=dict(
    optimizer="adam", learning_rate=5e-4, schedule="linear", epochs=10, batch_size=64,
    weight_decay=1e-5))
_STEP2 = _STEP1.replace(_SOURCE, weight_decay=0.0)
_DISTRIBUTION = {"distill_loss": "distribution"}
STAGED_RECIPE = StagedRecipe(
    source=_SOURCE,
    stages=(
        RecipeStage("step1", {"kernel_quantizer": None}, _STEP1, teacher=USER_TEACHER,
                    train_options=_DISTRIBUTION,
                    note="binary activations, real weights"),
        RecipeStage("step2", {}, _STEP2, start_from="step1", teacher=USER_TEACHER,
                    train_options=_DISTRIBUTION, note="binary weights, from step 1's"),
    ),
)
# The recipe `recipe="paper"` resolves to for one stage (its steps set their own).
PAPER_RECIPE = _STEP2


def binarized_builder(source: tf.keras.Model, model_options: Mapping[str, Any],
                      weights: Optional[str] = None
                      ) -> Callable[[Tuple[int, int, int], int], tf.keras.Model]:
    """`build_model(input_shape, num_classes)` of a binarized run: `bnn_keras.binarize` of
    `source` (the run's copy of its float model) with `model_options`, in the dtype policy in
    force when it is called, then `weights` (an earlier step's model file) loaded by layer
    name.

    Raises:
        BnnError: the source's input or classes are not the data's, or an unknown option.
    """
    from bnn_keras.binarization import BinarizeOptions, binarize

    options = BinarizeOptions.from_dict(dict(model_options))

    def build(input_shape: Tuple[int, int, int], num_classes: int) -> tf.keras.Model:
        shape = tuple(int(d) for d in source.input_shape[1:])
        if shape != tuple(input_shape) or int(source.output_shape[-1]) != num_classes:
            raise BnnError(
                f"The float model takes {shape} inputs and gives {source.output_shape[-1]} "
                f"classes; the data gives {tuple(input_shape)} images of {num_classes} "
                "classes: give the data set (and `image_size`) it was trained on.")
        policy = tf.keras.mixed_precision.global_policy().name
        model = binarize(source, options, dtype=policy).model
        if weights is not None:
            from bnn_keras import graph
            from bnn_keras.model_files import read_model_file

            graph.copy_weights(read_model_file(weights).model, model)
        return model

    return build
