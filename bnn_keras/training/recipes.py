"""Training recipes: optimizer, learning-rate schedule, label smoothing and weight decay.

A `Recipe` is plain data (JSON via `dataclasses.asdict`, back via `Recipe.from_dict`), so a run
folder can record exactly how a model was trained. `build_optimizer` turns it into a Keras
optimizer, `loss` into a loss, and `add_weight_decay` into an L2 penalty on the model's
full-precision kernels only. `paper_recipe` turns the published recipe a model's registry entry
carries (`models.PaperRecipe`, each value citing its source) into a `Recipe`: training sits
above the models and reads them, the models never import training.

Schedules (`bnn_keras.schedules.WarmupDecay`) are counted in optimizer steps
(`optimizer.iterations`, i.e. updates already applied); they and the loss
(`bnn_keras.losses`) are serializable Keras objects of the plugin, registered by
`import bnn_keras`, so a saved model reloads with its optimizer state and schedule without
this module.

References:
    - Bop ("Latent Weights Do Not Exist"): https://arxiv.org/abs/1906.02107
    - Label smoothing: https://arxiv.org/abs/1512.00567
    - The papers of the published recipes: cited where each model registers its recipe
      (models/*.py), mostly larq-zoo's training configs (https://github.com/larq/zoo).
"""

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import larq as lq
import tensorflow as tf

from bnn_keras import optimizers as bnn_optimizers
from bnn_keras.binary import binary_kernels, kernel_weights
from bnn_keras.errors import BnnError
from bnn_keras.losses import SmoothedSparseCategoricalCrossentropy
from bnn_keras.schedules import SCHEDULES, WarmupDecay

__all__ = [
    "OPTIMIZERS",
    "Recipe",
    "SCHEDULES",
    "SmoothedSparseCategoricalCrossentropy",
    "WarmupDecay",
    "add_weight_decay",
    "binary_kernels",
    "build_optimizer",
    "build_schedule",
    "default_recipe",
    "decayed_kernels",
    "loss",
    "paper_recipe",
]

_PACKAGE = "bnn_keras"
OPTIMIZERS = ("adam", "bop", "adam-sgd")


@dataclasses.dataclass
class Recipe:
    """How to train a model: optimizer, schedule, regularization and (optionally) budget.

    Attributes:
        optimizer: "adam" (every weight), "bop" (Bop for binary kernels, Adam for the rest) or
            "adam-sgd" (Adam for binary kernels, SGD with momentum for the rest, as QuickNet).
        learning_rate: Peak Adam learning rate (reached after the warm-up).
        float_learning_rate: For "adam-sgd": peak SGD learning rate of the full-precision
            weights, on the same schedule.
        sgd_momentum: For "adam-sgd": SGD's momentum.
        schedule: "constant", "step" (multiply at epoch boundaries), "linear" (to 0 at the last
            step) or "cosine" (to 0 at the last step).
        warmup_epochs: Epochs of linear warm-up from 0 to `learning_rate` (may be fractional).
        step_epochs: For "step": decay every this many epochs (ignored if `step_boundaries`).
        step_boundaries: For "step": epochs (from the start of training) at which to decay.
        step_factor: For "step": the multiplier applied at each boundary.
        step_multipliers: For "step": explicit multipliers of `learning_rate`, one more than
            the boundaries (overrides `step_factor`; for papers whose factors vary).
        label_smoothing: Label smoothing of the cross-entropy (0 = none).
        weight_decay: L2 coefficient on full-precision kernels (binary kernels are never decayed).
        adam_epsilon: Adam's epsilon.
        bop_threshold: Bop's flip threshold tau.
        bop_gamma: Bop's adaptivity rate gamma (its moving-average factor).
        bop_gamma_step_epochs: Multiply gamma by `bop_gamma_step_factor` every this many epochs.
        bop_gamma_step_factor: See `bop_gamma_step_epochs`.
        epochs: The paper's number of epochs; None where it gives none.
        batch_size: The paper's (global) batch size, the reference for learning-rate scaling.
        source: Where the values come from.
    """

    optimizer: str = "adam"
    learning_rate: float = 1e-3
    float_learning_rate: float = 0.1
    sgd_momentum: float = 0.9
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    step_epochs: Optional[int] = None
    step_boundaries: Optional[Tuple[int, ...]] = None
    step_factor: float = 0.1
    step_multipliers: Optional[Tuple[float, ...]] = None
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    adam_epsilon: float = 1e-7
    bop_threshold: float = 1e-8
    bop_gamma: float = 1e-4
    bop_gamma_step_epochs: Optional[int] = None
    bop_gamma_step_factor: float = 0.1
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    source: str = ""

    def __post_init__(self) -> None:
        # JSON gives lists back; tuples keep recipes hashable-ish and equal after a round trip.
        if self.step_boundaries is not None:
            self.step_boundaries = tuple(int(b) for b in self.step_boundaries)
        if self.step_multipliers is not None:
            self.step_multipliers = tuple(float(m) for m in self.step_multipliers)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "Recipe":
        """The recipe written by `dataclasses.asdict` (e.g. read back from config.json).

        Raises:
            BnnError: unknown keys.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BnnError(f"Unknown recipe fields {unknown}; known fields: {sorted(known)}.")
        return cls(**values)

    @classmethod
    def from_paper(cls, paper: Any) -> "Recipe":
        """The `Recipe` of a registry entry's `models.recipes.PaperRecipe`: its values over
        `Recipe`'s defaults, its source the paper's.

        Raises:
            BnnError: a value that is no `Recipe` field.
        """
        return cls.from_dict({**paper.values, "source": paper.source})

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with some fields changed (e.g. a user's --lr over a paper recipe)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """The recipe in one line for people, e.g. "adam at 0.004, 1e-08 epsilon; step
        schedule x0.1 at epochs 100, 110; 120 epochs, batch 256 (from Back to Simplicity ...)"."""
        optimizer = f"{self.optimizer} at {self.learning_rate:g}"
        if self.optimizer == "adam-sgd":
            optimizer += (f" (binary kernels), SGD at {self.float_learning_rate:g} with momentum "
                          f"{self.sgd_momentum:g} (the others)")
        elif self.optimizer == "bop":
            optimizer += (f" (the others), Bop threshold {self.bop_threshold:g} and gamma "
                          f"{self.bop_gamma:g} (binary kernels)")
        if self.adam_epsilon != Recipe.adam_epsilon and self.optimizer != "adam-sgd":
            optimizer += f", epsilon {self.adam_epsilon:g}"
        schedule = f"{self.schedule} schedule"
        if self.schedule == "step":
            if self.step_multipliers is not None:
                factors = ", ".join(f"{m:g}" for m in self.step_multipliers)
                schedule += f" (multipliers {factors} from epochs 0, " + ", ".join(
                    str(b) for b in self.step_boundaries or ()) + ")"
            elif self.step_boundaries is not None:
                schedule += (f" (x{self.step_factor:g} at epochs "
                             f"{', '.join(str(b) for b in self.step_boundaries)})")
            elif self.step_epochs is not None:
                schedule += f" (x{self.step_factor:g} every {self.step_epochs} epochs)"
        if self.warmup_epochs:
            schedule = f"{self.warmup_epochs:g} warm-up epochs, then {schedule}"
        parts = [optimizer, schedule]
        if self.label_smoothing:
            parts.append(f"label smoothing {self.label_smoothing:g}")
        if self.weight_decay:
            parts.append(f"weight decay {self.weight_decay:g}")
        if self.epochs is not None:
            parts.append(f"{self.epochs} epochs" + (f", batch {self.batch_size}"
                                                    if self.batch_size is not None else ""))
        return "; ".join(parts) + (f" (from {self.source})" if self.source else "")

    def validate(self) -> None:
        """Raises `BnnError` naming the first field that is out of range."""
        if self.optimizer not in OPTIMIZERS:
            raise BnnError(f"Expected optimizer in {OPTIMIZERS}, got {self.optimizer!r}.")
        if self.schedule not in SCHEDULES:
            raise BnnError(f"Expected schedule in {SCHEDULES}, got {self.schedule!r}.")
        checks = [
            ("learning_rate > 0", self.learning_rate, self.learning_rate > 0),
            ("float_learning_rate > 0", self.float_learning_rate, self.float_learning_rate > 0),
            ("0 <= sgd_momentum < 1", self.sgd_momentum, 0 <= self.sgd_momentum < 1),
            ("warmup_epochs >= 0", self.warmup_epochs, self.warmup_epochs >= 0),
            ("0 <= label_smoothing < 1", self.label_smoothing, 0 <= self.label_smoothing < 1),
            ("weight_decay >= 0", self.weight_decay, self.weight_decay >= 0),
            ("step_factor > 0", self.step_factor, self.step_factor > 0),
            ("step_epochs >= 1", self.step_epochs,
             self.step_epochs is None or self.step_epochs >= 1),
            ("bop_threshold >= 0", self.bop_threshold, self.bop_threshold >= 0),
            ("0 < bop_gamma <= 1", self.bop_gamma, 0 < self.bop_gamma <= 1),
            ("epochs >= 1", self.epochs, self.epochs is None or self.epochs >= 1),
            ("batch_size >= 1", self.batch_size, self.batch_size is None or self.batch_size >= 1),
        ]
        for expected, value, ok in checks:
            if not ok:
                raise BnnError(f"Expected recipe {expected}, got {value!r}.")
        if self.step_multipliers is not None:
            boundaries = self.step_boundaries or ()
            if len(self.step_multipliers) != len(boundaries) + 1:
                raise BnnError(
                    f"Expected {len(boundaries) + 1} step_multipliers (one more than the "
                    f"step_boundaries), got {len(self.step_multipliers)}."
                )
        if self.step_boundaries is not None and list(self.step_boundaries) != sorted(
            set(self.step_boundaries)
        ):
            raise BnnError(
                f"Expected increasing step_boundaries, got {list(self.step_boundaries)}."
            )


def default_recipe() -> Recipe:
    """Adam at 1e-3, constant, no smoothing, no decay: what `bnn train` uses by default."""
    return Recipe(source="bnn default")


# -- schedules -------------------------------------------------------------------------------


def _step_plan(recipe: Recipe, epochs: int) -> Tuple[List[int], List[float]]:
    """Boundaries (in epochs) and multipliers of a "step" recipe."""
    if recipe.step_boundaries is not None:
        boundaries = list(recipe.step_boundaries)
    elif recipe.step_epochs is not None:
        boundaries = list(range(recipe.step_epochs, epochs, recipe.step_epochs))
    else:
        raise BnnError("A 'step' schedule needs step_epochs or step_boundaries.")
    if recipe.step_multipliers is not None:
        multipliers = list(recipe.step_multipliers)
    else:
        multipliers = [recipe.step_factor**i for i in range(len(boundaries) + 1)]
    return boundaries, multipliers


def build_schedule(
    recipe: Recipe, *, steps_per_epoch: int, epochs: int, peak: Optional[float] = None
) -> WarmupDecay:
    """The learning-rate schedule of `recipe` for a run of `epochs` x `steps_per_epoch` steps.

    `peak` replaces `recipe.learning_rate` (the SGD side of "adam-sgd" follows the same shape
    at `float_learning_rate`).

    Raises:
        BnnError: an invalid recipe or run length.
    """
    recipe.validate()
    if steps_per_epoch < 1 or epochs < 1:
        raise BnnError(
            f"Expected steps_per_epoch >= 1 and epochs >= 1, got {steps_per_epoch} and {epochs}."
        )
    total = steps_per_epoch * epochs
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    if recipe.schedule in ("linear", "cosine") and warmup >= total:
        raise BnnError(
            f"Expected warmup_epochs < epochs for a {recipe.schedule} schedule, got "
            f"{recipe.warmup_epochs} and {epochs}."
        )
    boundaries: List[int] = []
    multipliers: Optional[List[float]] = None
    if recipe.schedule == "step":
        epoch_boundaries, multipliers = _step_plan(recipe, epochs)
        boundaries = [b * steps_per_epoch for b in epoch_boundaries]
    return WarmupDecay(
        recipe.learning_rate if peak is None else peak,
        decay=recipe.schedule,
        warmup_steps=warmup,
        total_steps=total,
        boundaries=boundaries,
        multipliers=multipliers,
    )


# -- which weights are binary ----------------------------------------------------------------


def decayed_kernels(model: tf.keras.Model) -> List[tf.Variable]:
    """Full-precision kernels: the weights `add_weight_decay` penalizes (no biases or BN)."""
    return [v for v, binary in kernel_weights(model) if not binary]


def add_weight_decay(model: tf.keras.Model, weight_decay: float) -> List[tf.Variable]:
    """Adds `weight_decay * sum(w**2)` over the full-precision kernels to the model's losses.

    Binary latent kernels are skipped: decaying them pulls them towards 0, where the sign flips
    on noise (Tang et al. advise against L2 on binary weights). This is Keras' L2 convention
    (as `tf.keras.regularizers.L2`), coupled to the gradient, which works with every optimizer
    including Bop's CaseOptimizer. The penalty is not saved with the model; call this again on
    a reloaded model to continue training.

    Args:
        model: A built model.
        weight_decay: The L2 coefficient; 0 adds nothing.

    Returns:
        The decayed variables.

    References:
        - Tang et al., How to Train a Compact Binary Neural Network with High Accuracy?
          https://ojs.aaai.org/index.php/AAAI/article/view/10862
    """
    if weight_decay < 0:
        raise BnnError(f"Expected weight_decay >= 0, got {weight_decay!r}.")
    variables = decayed_kernels(model)
    if weight_decay == 0 or not variables:
        return []
    coefficient = float(weight_decay)

    def penalty():
        return coefficient * tf.add_n(
            [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables]
        )

    model.add_loss(penalty)
    return variables


# -- optimizer ---------------------------------------------------------------------------------


def build_optimizer(
    recipe: Recipe, model: tf.keras.Model, *, steps_per_epoch: int, epochs: int
) -> tf.keras.optimizers.Optimizer:
    """The optimizer of `recipe` for `model`, with its learning-rate schedule.

    "adam" gives `bnn_keras.optimizers.Adam` (tf.keras's Adam, traced with fewer ops). "bop" gives
    larq's `CaseOptimizer`: Bop for the variables larq marks binary (`var.precision == 1`, i.e.
    kernels of layers with a 1-bit kernel quantizer) and Adam for all others. "adam-sgd" splits the
    same way: Adam at `learning_rate` for the binary latent weights, SGD with momentum at
    `float_learning_rate` for the others, both on the recipe's schedule (larq-zoo's QuickNet
    recipe). larq 0.14's CaseOptimizer and Bop derive from the *legacy* Keras optimizer and reject
    new-style ones, so the inner optimizers are `tf.keras.optimizers.legacy` ones. Bop keeps the
    latent weights at exactly +-1; pair it with a kernel quantizer whose pseudo-gradient passes at
    |w| = 1 (`ste_sign`, identity), not with a kernel constraint that clips below 1.

    Call it (and `model.compile`) inside the same `strategy.scope()` as the model.

    Args:
        recipe: The recipe.
        model: The model to train (needed to check that Bop has binary weights to train).
        steps_per_epoch: Optimizer steps per epoch (schedules are in steps).
        epochs: Epochs of this run (the schedule ends there, whatever `recipe.epochs` says).

    Returns:
        A Keras optimizer.

    Raises:
        BnnError: invalid recipe, or "bop"/"adam-sgd" for a model without binary kernels.

    References:
        - Helwegen et al., Latent Weights Do Not Exist: https://arxiv.org/abs/1906.02107
    """
    schedule = build_schedule(recipe, steps_per_epoch=steps_per_epoch, epochs=epochs)
    if recipe.optimizer == "adam":
        return bnn_optimizers.Adam(schedule, epsilon=recipe.adam_epsilon)
    if not binary_kernels(model):
        raise BnnError(
            f"Model {model.name!r} has no binary kernels for {recipe.optimizer} to train "
            "separately; set `optimizer` to adam."
        )
    if recipe.optimizer == "adam-sgd":
        float_schedule = build_schedule(
            recipe, steps_per_epoch=steps_per_epoch, epochs=epochs, peak=recipe.float_learning_rate
        )
        return lq.optimizers.CaseOptimizer(
            (
                lq.optimizers.Bop.is_binary_variable,
                tf.keras.optimizers.legacy.Adam(schedule, epsilon=recipe.adam_epsilon),
            ),
            default_optimizer=tf.keras.optimizers.legacy.SGD(
                float_schedule, momentum=recipe.sgd_momentum
            ),
        )
    gamma: Any = recipe.bop_gamma
    if recipe.bop_gamma_step_epochs:
        gamma = tf.keras.optimizers.schedules.ExponentialDecay(
            recipe.bop_gamma,
            decay_steps=recipe.bop_gamma_step_epochs * steps_per_epoch,
            decay_rate=recipe.bop_gamma_step_factor,
            staircase=True,
        )
    return lq.optimizers.CaseOptimizer(
        (
            lq.optimizers.Bop.is_binary_variable,
            lq.optimizers.Bop(threshold=recipe.bop_threshold, gamma=gamma),
        ),
        default_optimizer=tf.keras.optimizers.legacy.Adam(schedule, epsilon=recipe.adam_epsilon),
    )


# -- loss ---------------------------------------------------------------------------------------


def loss(recipe: Recipe, *, from_logits: bool = False) -> tf.keras.losses.Loss:
    """The recipe's loss: sparse categorical cross-entropy, with label smoothing if any.

    Args:
        recipe: The recipe.
        from_logits: Whether the model outputs logits (our models end in softmax).

    Returns:
        A Keras loss taking integer labels.
    """
    recipe.validate()
    if recipe.label_smoothing == 0:
        return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    return SmoothedSparseCategoricalCrossentropy(recipe.label_smoothing, from_logits=from_logits)


# -- published recipes ---------------------------------------------------------------------------


def paper_recipe(model_name: str, *, optimizer: str = "adam") -> Recipe:
    """The published training recipe of a registered model, from its registry entry.

    Args:
        model_name: Registry name, e.g. "binary-densenet28".
        optimizer: "bop" for the Bop paper's recipe (the entry's `bop_recipe`); any other
            optimizer for the model paper's (its `recipe`; the caller overrides its optimizer).

    Returns:
        A new `Recipe`: the entry's values over `Recipe`'s defaults, its `source` the entry's.

    Raises:
        BnnError: no published recipe for that model; the message lists those that have one.
    """
    # The registry imports every model family; only a paper recipe needs it.
    import models

    if optimizer not in OPTIMIZERS:
        raise BnnError(f"Expected optimizer in {OPTIMIZERS}, got {optimizer!r}.")
    from bnn_keras.training import binarized

    if model_name == binarized.BINARIZED and optimizer != "bop":
        return Recipe.from_paper(binarized.PAPER_RECIPE)  # a user's model, binarized
    kind = "bop_recipe" if optimizer == "bop" else "recipe"
    table = {name: getattr(models.get_entry(name), kind) for name in models.list_models()}
    table = {name: published for name, published in table.items() if published is not None}
    if model_name not in table:
        raise BnnError(
            f"No published {optimizer} recipe for {model_name!r}; models with one: "
            f"{', '.join(sorted(table))}. Use the default recipe or set the options yourself."
        )
    return Recipe.from_paper(table[model_name])
