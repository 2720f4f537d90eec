"""Published training recipes as plain values: `PaperRecipe` for one run, `StagedRecipe` for a
paper that trains in stages (ReActNet's two steps, Real-to-Binary Net's teacher -> float ->
binary sequence).

A registry entry carries its model's recipe (`models.registry.register_model(recipe=...)`);
the training application (`bnn_keras.training.recipes` and `stages`) turns these values into
its own. Nothing here imports TensorFlow or the training application.
"""

import dataclasses
import types
from typing import Any, List, Mapping, Optional, Tuple

# The file of larq-zoo's training configurations, which most published recipes come from.
LARQ_ZOO = "larq-zoo larq_zoo/training/basic_experiments.py"


@dataclasses.dataclass(frozen=True)
class PaperRecipe:
    """How a model's paper, or the code that trained its published weights, trained it.

    Plain values only: `bnn_keras.training.recipes.paper_recipe` turns them into a `Recipe`
    (`bnn train MODEL --recipe paper`). `values` names `Recipe` fields (optimizer,
    learning_rate, float_learning_rate, schedule, warmup_epochs, step_boundaries, step_factor,
    step_multipliers, label_smoothing, weight_decay, adam_epsilon, bop_*, epochs, batch_size);
    a field it leaves out keeps `Recipe`'s default. Recipes are for ImageNet unless `source`
    says otherwise, and `batch_size` is global.

    Attributes:
        source: The paper and the code the values come from.
        values: `Recipe` field -> value.
    """

    source: str
    values: Mapping[str, Any]

    def __post_init__(self) -> None:
        # Read-only: an entry's recipe is a published fact, not a default to edit in place.
        object.__setattr__(self, "values", types.MappingProxyType(dict(self.values)))

    def replace(self, source: str, **changes: Any) -> "PaperRecipe":
        """The recipe of a sibling model: these values with `changes`, from `source`."""
        return PaperRecipe(source, {**self.values, **changes})


# `RecipeStage.teacher` for a stage that distils from the classifier the user gives to the run
# (the training application's `teacher` option), when one is given.
USER_TEACHER = "user-teacher"


@dataclasses.dataclass(frozen=True)
class RecipeStage:
    """One stage of a staged training recipe (`StagedRecipe`): plain values.

    Attributes:
        name: The stage's name (also its run folder's, after its number: `1-step1`).
        model_options: Options of the registry entry that build this stage's model (e.g.
            `{"kernel_quantizer": None}` for real weights, `{"stage": "ban"}`).
        recipe: The stage's `PaperRecipe` (the same keys as a single-stage recipe), citing
            its source.
        start_from: The earlier stage whose trained weights this stage starts from (the
            stages' weighted layers carry the same names), or None (fresh initialisation).
        teacher: The earlier stage this stage distils from, `USER_TEACHER` (the classifier
            the user gives the run, if any), or None (labels only).
        train_options: Other `TrainConfig` fields -> value for this stage (the distillation
            settings: `distill_loss`, `distill_weight`, `distill_temperature`, ...).
        note: What in these values differs from the source, and why (empty when nothing).
    """

    name: str
    model_options: Mapping[str, Any]
    recipe: "PaperRecipe"
    start_from: Optional[str] = None
    teacher: Optional[str] = None
    train_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""

    def __post_init__(self) -> None:
        for name in ("model_options", "train_options"):
            object.__setattr__(self, name, types.MappingProxyType(dict(getattr(self, name))))


@dataclasses.dataclass(frozen=True)
class StagedRecipe:
    """A paper's training in stages, each a run of its own (`bnn train MODEL --recipe paper`
    trains them in order as one run; `bnn_keras.training.stages`).

    Attributes:
        source: The paper and the code the stages come from.
        stages: The stages in training order; each `start_from` and stage `teacher` names an
            earlier one.
    """

    source: str
    stages: Tuple[RecipeStage, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        seen: List[str] = []
        for stage in self.stages:
            if stage.name in seen or stage.name == USER_TEACHER:
                raise ValueError(f"Stage name {stage.name!r} is used twice or reserved.")
            if stage.start_from not in (None, *seen) or (
                    stage.teacher not in (None, USER_TEACHER, *seen)):
                raise ValueError(f"Stage {stage.name!r} starts from or distils from a stage "
                                 "that is not an earlier one.")
            seen.append(stage.name)
        if not self.stages:
            raise ValueError("A staged recipe needs at least one stage.")

    @property
    def final(self) -> RecipeStage:
        """The last stage: the one whose model the run delivers."""
        return self.stages[-1]
