"""The BNN model family behind one registry; each entry carries its paper's training recipe.

models/ imports only the Keras plugin (`bnn_keras`), never the training application.

Example:
    >>> import models
    >>> model = models.create_model("binary-densenet28", input_shape=(32, 32, 3), num_classes=10)
"""

import bnn_keras  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

from models.recipes import PaperRecipe, RecipeStage, StagedRecipe  # noqa: E402
from models.registry import (  # noqa: E402
    ModelEntry,
    UnknownModelError,
    create_model,
    describe,
    get_entry,
    get_model_fn,
    list_models,
    register_model,
)

# Importing each family module registers its models.
from models import (  # noqa: E402,F401
    alexnet,
    binarynet,
    bnn_plus,
    compact_bnn,
    densenet,
    dorefanet,
    meliusnet,
    quicknet,
    reactnet,
    real_to_binary,
    resnet,
    xnornet,
)

__all__ = [
    "ModelEntry",
    "PaperRecipe",
    "RecipeStage",
    "StagedRecipe",
    "UnknownModelError",
    "create_model",
    "describe",
    "get_entry",
    "get_model_fn",
    "list_models",
    "register_model",
]
