"""Staged training recipes: a paper's stages trained in order as one resumable run.

Some papers train in stages, each a full training run that starts from an earlier stage's
weights or distils from an earlier stage: ReActNet's two steps (binary activations with real
weights, then binary weights), Real-to-Binary Net's ResNet-18 teacher -> float -> binary
activations -> binary network. A registry entry carries them as plain data
(`models.registry.StagedRecipe`); `bnn train MODEL --recipe paper` on such a model trains
`train_staged(config, run_dir)`:

    RUN_DIR/
        stages.json     the plan as resolved (each stage's options, recipe, teacher, start)
                        and how far each stage got (pending, running, interrupted, failed,
                        finished) with its result
        stages/1-NAME/  each stage a normal run folder (`bnn_keras.training.run`): locked,
        stages/2-NAME/  resumable and convertible on its own
        model.keras, config.json, metrics.json, history.csv
                        the final stage's, copied when every stage has finished, so that
                        `bnn convert RUN_DIR` and `bnn evaluate RUN_DIR` take the staged run

A stage starts from an earlier stage's model.keras as its weights file (`TrainConfig.weights`:
the stages of one family carry the same layer names), and distils from an earlier stage's run
folder as its teacher (`TrainConfig.teacher`), both by absolute path, as config.json records
them. A stage whose paper teacher is "a float model" (ReActNet's) takes the classifier of the
user's `teacher`, and learns from the labels alone without one (`StagedPlan.notes` says so).

The options the user gives (`epochs`, `batch_size`, `learning_rate`, `dataset`, `image_size`,
`steps_per_epoch`, `seed`, `model_options`, tricks, ...) apply to every stage, over each stage's
recipe; stages.json records them. Options a stage sets itself are refused: `weights` and
`float_copy` (the stages decide what each starts from and trains), the distillation options
(each stage's own), `teacher` where no stage takes one, `model_options` keys a stage sets, and
the multi-worker strategy (one process runs the stages).

`resume_staged(run_dir)` (`bnn train --resume RUN_DIR`) continues the stage that was
interrupted and then trains the remaining ones; a finished staged run is refused, as a finished
run is. The staged run holds RUN_DIR's lock (`run_lock`) from start to end, and each stage its
own folder's.
"""

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import tensorflow as tf

from bnn_keras import files
from bnn_keras.errors import BnnError
from bnn_keras.training import recipes, run_lock, signals
from bnn_keras.training.config import (
    CONFIG_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE, TrainConfig, resolve_recipe,
)

STAGES_FILE = "stages.json"
STAGES_DIR = "stages"
# stages.json's layout.
STAGES_FORMAT_VERSION = 1
# The final stage's files that the staged run's folder gets, in the order they are copied
# (model.keras last: a folder with it and metrics.json reads as a finished run).
FINAL_FILES = (HISTORY_FILE, CONFIG_FILE, METRICS_FILE, MODEL_FILE)
# TrainConfig fields that override single values of each stage's recipe when the user sets
# them (as they override a single-stage paper recipe).
_RECIPE_OVERRIDES = ("learning_rate", "float_learning_rate", "optimizer", "schedule",
                     "warmup_epochs", "label_smoothing", "weight_decay")
# Options each stage sets itself.
_DISTILL_OPTIONS = ("distill_loss", "distill_weight", "distill_temperature",
                    "distill_attention_weight", "distill_attention_layers")

Report = Callable[[str], None]


@dataclasses.dataclass
class PlannedStage:
    """One stage of a staged run, resolved: what `train` is given for it.

    Attributes:
        name: The stage's name in the registry's plan.
        folder: Its run folder, relative to the staged run's folder (`stages/1-NAME`).
        config: Its `TrainConfig` (the user's options, the stage's model options, recipe
            values, start and teacher).
        recipe: The recipe it trains with (the stage's, with the user's overrides).
        start_from: The earlier stage whose weights it starts from, or None.
        teacher: The earlier stage it distils from, "--teacher" (the user's), or None.
        note: How the stage's values differ from their source, if they do.
        status: pending, running, interrupted, failed or finished.
        result: Its test accuracy, epochs and wall time once finished.
    """

    name: str
    folder: str
    config: TrainConfig
    recipe: recipes.Recipe
    start_from: Optional[str] = None
    teacher: Optional[str] = None
    note: str = ""
    status: str = "pending"
    result: Optional[Dict[str, Any]] = None

    def to_dict(self) -> Dict[str, Any]:
        values = dataclasses.asdict(self)
        values["config"] = dataclasses.asdict(self.config)
        values["recipe"] = dataclasses.asdict(self.recipe)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PlannedStage":
        return cls(**{**values, "config": TrainConfig(**values["config"]),
                      "recipe": recipes.Recipe.from_dict(values["recipe"])})


@dataclasses.dataclass
class StagedPlan:
    """A staged run: the user's options, the model's plan resolved, and how far it got.

    Attributes:
        model: The registry model.
        source: Where the stages come from (the registry's `StagedRecipe.source`).
        options: The user's options (a `TrainConfig`), as given.
        stages: The stages in training order.
        notes: What the user should know about this plan (e.g. a teacher left out).
        status: running, interrupted, failed or finished.
    """

    model: str
    source: str
    options: TrainConfig
    stages: List[PlannedStage]
    notes: List[str] = dataclasses.field(default_factory=list)
    status: str = "running"

    def to_dict(self) -> Dict[str, Any]:
        return {"format_version": STAGES_FORMAT_VERSION, "model": self.model,
                "source": self.source, "status": self.status, "notes": list(self.notes),
                "options": dataclasses.asdict(self.options),
                "stages": [stage.to_dict() for stage in self.stages]}

    @classmethod
    def from_dict(cls, values: Any, source: str) -> "StagedPlan":
        """The plan of stages.json's content (`source` names the file in messages).

        Raises:
            BnnError: not a stages.json this bnn wrote or reads.
        """
        if not isinstance(values, dict):
            raise BnnError(f"{source} does not hold a JSON object.")
        version = values.get("format_version")
        if not isinstance(version, int) or version > STAGES_FORMAT_VERSION:
            raise BnnError(f"{source} has format_version {version!r}; this bnn reads up to "
                           f"{STAGES_FORMAT_VERSION}.")
        try:
            return cls(model=values["model"], source=values["source"],
                       options=TrainConfig(**values["options"]),
                       stages=[PlannedStage.from_dict(s) for s in values["stages"]],
                       notes=list(values["notes"]), status=values["status"])
        except (KeyError, TypeError, BnnError) as exc:
            raise BnnError(f"{source} is damaged ({exc.__class__.__name__}: {exc}); restore it, "
                           "or start a new run.") from None

    def write(self, run_dir: Path) -> None:
        files.write_json(Path(run_dir) / STAGES_FILE, self.to_dict())

    @classmethod
    def read(cls, run_dir: Union[str, Path]) -> "StagedPlan":
        path = Path(run_dir) / STAGES_FILE
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise BnnError(f"{path} does not exist: {run_dir} is not a staged run.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BnnError(f"{path} cannot be read ({exc.__class__.__name__}); restore it, "
                           "or start a new run.") from None
        return cls.from_dict(values, str(path))


@dataclasses.dataclass
class StagedResult:
    """What `train_staged` and `resume_staged` return.

    Attributes:
        run_dir: The staged run's folder.
        metrics: The final stage's metrics.json (the staged run's).
        plan: The plan, every stage finished.
    """

    run_dir: Path
    metrics: Dict[str, Any]
    plan: StagedPlan


def staged_recipe(model: str):
    """The registry's `StagedRecipe` of `model`, or None when its paper has no stages.

    Raises:
        UnknownModelError: `model` is not registered.
    """
    import models

    return models.get_entry(model).staged


def is_staged_run(run_dir: Union[str, Path]) -> bool:
    """Whether `run_dir` is the folder of a staged run (it has stages.json)."""
    return (Path(run_dir) / STAGES_FILE).is_file()


def staged_run_of_stage(run_dir: Union[str, Path]) -> Optional[Path]:
    """The staged run a stage folder (`RUN/stages/1-NAME`) belongs to, or None."""
    parent = Path(run_dir).resolve().parent
    if parent.name == STAGES_DIR and is_staged_run(parent.parent):
        return parent.parent
    return None


def plan_stages(config: TrainConfig, run_dir: Union[str, Path]) -> StagedPlan:
    """The staged run of `config` (`recipe="paper"` on a model with a staged recipe) in
    `run_dir`, every stage's options checked; no file is read or written.

    Raises:
        BnnError: a model without a staged recipe, an option a stage sets itself, or an
            option out of range (naming the `TrainConfig` field).
    """
    staged = staged_recipe(config.model)
    if staged is None:
        raise BnnError(f"{config.model} has no staged recipe; `recipe` paper trains it in one "
                       "run.")
    _refuse_stage_options(config, staged)
    config.validate()
    run_dir = Path(run_dir).absolute()
    folders = {stage.name: f"{STAGES_DIR}/{number}-{stage.name}"
               for number, stage in enumerate(staged.stages, start=1)}
    notes = []
    user_stages = [s.name for s in staged.stages if s.teacher == _user_teacher()]
    if user_stages and config.teacher is None:
        notes.append(
            f"{config.model}'s staged recipe distils stage(s) {', '.join(user_stages)} from a "
            "float teacher; without `teacher` they learn from the labels alone.")
    planned = []
    known_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for stage in staged.stages:
        recipe = recipes.Recipe.from_dict({**stage.recipe.values, "source": stage.recipe.source})
        recipe = recipe.replace(**{key: getattr(config, key) for key in _RECIPE_OVERRIDES
                                   if getattr(config, key) is not None})
        recipe = recipe.replace(epochs=config.epochs or recipe.epochs or 10,
                                batch_size=config.batch_size or recipe.batch_size or 64)
        if stage.teacher is None:
            teacher = None
        elif stage.teacher == _user_teacher():
            teacher = config.teacher
        else:
            teacher = str(run_dir / folders[stage.teacher])
        unknown = sorted(set(stage.train_options) - known_fields)
        if unknown:  # a plan that names options this TrainConfig does not have
            raise ValueError(f"Stage {stage.name!r} of {config.model} sets unknown TrainConfig "
                             f"fields {unknown}.")
        stage_config = dataclasses.replace(
            config, recipe="paper",
            model_options={**config.model_options, **stage.model_options},
            epochs=recipe.epochs, batch_size=recipe.batch_size,
            **{key: getattr(recipe, key) for key in _RECIPE_OVERRIDES},
            weights=(None if stage.start_from is None
                     else str(run_dir / folders[stage.start_from] / MODEL_FILE)),
            teacher=teacher,
            **(dict(stage.train_options) if teacher is not None else {}),
        )
        try:
            stage_config, _ = resolve_recipe(stage_config)
            # The schedule's checks (a warm-up longer than the run), before any stage trains.
            recipes.build_schedule(recipe, steps_per_epoch=config.steps_per_epoch or 1000,
                                   epochs=recipe.epochs)
        except BnnError as exc:
            raise BnnError(f"Stage {stage.name} of {config.model}'s staged recipe: {exc}") from None
        planned.append(PlannedStage(name=stage.name, folder=folders[stage.name],
                                    config=stage_config, recipe=recipe,
                                    start_from=stage.start_from, teacher=stage.teacher,
                                    note=stage.note))
    return StagedPlan(model=config.model, source=staged.source, options=config,
                      stages=planned, notes=notes)


def _user_teacher() -> str:
    from models.registry import USER_TEACHER

    return USER_TEACHER


def _refuse_stage_options(config: TrainConfig, staged) -> None:
    """Refuses options that each stage sets itself (one line naming the option)."""
    name = config.model
    if config.weights is not None:
        raise BnnError(f"`weights` does not apply to {name}'s staged recipe: each stage starts "
                       "from its plan's weights; drop `weights`, or train one stage with "
                       "`recipe` default.")
    if config.float_copy:
        raise BnnError(f"`float_copy` does not apply to {name}'s staged recipe; drop one of "
                       "them.")
    if config.strategy == "multi-worker":
        # Every worker would run the stages, and only one can hold the staged run's folder.
        raise BnnError(f"{name}'s staged recipe trains in one process; drop `strategy` "
                       "multi-worker, or train its stages one by one.")
    for option in _DISTILL_OPTIONS:
        if getattr(config, option, None) is not None:
            raise BnnError(f"`{option}` is set by each stage of {name}'s staged recipe; drop "
                           f"`{option}`.")
    if config.distill_cache:
        # Some stages distil with attention matching, or learn from the labels alone.
        raise BnnError(f"{name}'s staged recipe runs each stage's teacher at every step; drop "
                       "`distill_cache`.")
    if config.teacher is not None and not any(
            stage.teacher == _user_teacher() for stage in staged.stages):
        own = [s.teacher for s in staged.stages if s.teacher is not None]
        whose = (f"its stages distil from its own stages ({', '.join(own)})" if own
                 else "its stages learn from the labels alone")
        raise BnnError(f"`teacher` does not apply to {name}'s staged recipe: {whose}; drop "
                       "`teacher`.")
    for stage in staged.stages:
        taken = sorted(set(config.model_options) & set(stage.model_options))
        if taken:
            raise BnnError(f"`model_options` {taken[0]} is set by stage {stage.name} of "
                           f"{name}'s staged recipe; drop it.")


def train_staged(config: TrainConfig, run_dir: Union[str, Path], *, verbose: int = 1,
                 report: Optional[Report] = None,
                 callbacks: Optional[Mapping[str, Sequence[tf.keras.callbacks.Callback]]] = None
                 ) -> StagedResult:
    """Trains every stage of `config.model`'s staged recipe in order, as one run in `run_dir`.

    Args:
        config: The user's options (`recipe="paper"`).
        run_dir: The staged run's folder (new, or empty).
        verbose: Keras `fit` verbosity of each stage.
        report: Called with one line when a stage starts and when it ends (the CLI prints).
        callbacks: Stage name -> extra Keras callbacks of that stage's `fit`.

    Returns:
        A `StagedResult`.

    Raises:
        BnnError: bad options (before any folder is made), a used `run_dir`, or a stage's
            refusal; a refusal of the first stage before its folder exists leaves nothing.
        TrainingInterruptedError: Ctrl-C or SIGTERM; the stages done and the interrupted
            stage's last complete epoch are kept for `resume_staged`.
    """
    from bnn_keras.training.run import TrainingInterruptedError
    from bnn_keras.training.starting_point import Teacher

    run_dir = Path(run_dir)
    plan = plan_stages(config, run_dir)
    Teacher.of(config)  # the user's teacher exists, before any folder is made
    if run_dir.is_dir():
        run_lock.refuse_used_folder(run_dir)
    with run_lock.RunFolderLock(run_dir, create=True):
        run_lock.refuse_used_folder(run_dir, locked_by_us=True)
        for note in plan.notes:
            _say(report, f"Note: {note}")
        plan.write(run_dir)
        try:
            return _train_stages(plan, run_dir, verbose=verbose, report=report,
                                 callbacks=callbacks)
        except BaseException as exc:
            if (run_dir / plan.stages[0].folder).exists():
                raise
            # Refused or stopped before the first stage made its folder: leave nothing behind
            # (the lock removes the folder it created once it is empty).
            (run_dir / STAGES_FILE).unlink(missing_ok=True)
            _remove_empty(run_dir / STAGES_DIR)
            if isinstance(exc, TrainingInterruptedError):
                raise TrainingInterruptedError(
                    "Training interrupted before its first stage began; nothing was "
                    "kept.") from None
            raise


def resume_staged(run_dir: Union[str, Path], *, verbose: int = 1,
                  report: Optional[Report] = None,
                  callbacks: Optional[Mapping[str, Sequence[tf.keras.callbacks.Callback]]] = None
                  ) -> StagedResult:
    """Continues a staged run: the stage that was interrupted, then the remaining ones.

    Args:
        run_dir: The staged run's folder (with stages.json).
        verbose, report, callbacks: As for `train_staged`.

    Raises:
        BnnError: not a staged run, a damaged stages.json, or a run that has finished.
        RunFolderBusyError: another process is training in `run_dir`.
        TrainingInterruptedError: Ctrl-C or SIGTERM, as for `train_staged`.
    """
    run_dir = Path(run_dir)
    StagedPlan.read(run_dir)
    with run_lock.RunFolderLock(run_dir, create=False):
        plan = StagedPlan.read(run_dir)  # again, now that nobody else can change it
        if plan.status == "finished" and all((run_dir / n).is_file() for n in FINAL_FILES):
            raise BnnError(f"Run {run_dir} already finished all its {len(plan.stages)} stages; "
                           f"nothing to resume (its model is {run_dir / MODEL_FILE}).")
        done = sum(stage.status == "finished" for stage in plan.stages)
        _say(report, f"Resuming staged run {run_dir}: {plan.model}, {done} of "
                     f"{len(plan.stages)} stages done")
        plan.status = "running"
        plan.write(run_dir)
        return _train_stages(plan, run_dir, verbose=verbose, report=report, callbacks=callbacks)


def _train_stages(plan: StagedPlan, run_dir: Path, *, verbose: int, report: Optional[Report],
                  callbacks) -> StagedResult:
    """Trains (or resumes) each stage that has not finished, then gives `run_dir` the final
    stage's files; stages.json follows each stage's state."""
    from bnn_keras.training.progress import run_progress
    from bnn_keras.training.run import TrainingInterruptedError, resume_training, train

    total = len(plan.stages)
    with signals.interrupt_on_sigterm():  # between stages as well as inside `fit`
        for number, stage in enumerate(plan.stages, start=1):
            folder = run_dir / stage.folder
            started = (folder / CONFIG_FILE).is_file()
            if started and run_progress(folder).finished:
                if stage.status != "finished":  # it finished, stages.json was not told yet
                    _finished(plan, stage, folder, run_dir)
                continue
            _say(report, f"Stage {number}/{total} {stage.name}: {_describe(stage)}"
                         + (" (resuming)" if started else ""))
            stage.status = "running"
            plan.write(run_dir)
            extra = list((callbacks or {}).get(stage.name, ()))
            try:
                if started:
                    resume_training(folder, None, recipe=stage.recipe, verbose=verbose,
                                    callbacks=extra)
                else:
                    train(stage.config, None, folder, recipe=stage.recipe, verbose=verbose,
                          callbacks=extra)
            except (TrainingInterruptedError, KeyboardInterrupt):
                # A signal that arrived while the stage was being saved leaves it finished.
                done = (folder / CONFIG_FILE).is_file() and run_progress(folder).finished
                _stopped(plan, stage, folder, run_dir, "interrupted", done)
                raise TrainingInterruptedError(
                    f"Training interrupted in stage {number}/{total} ({stage.name}); the "
                    f"finished stages and its last complete epoch are kept; continue with: "
                    f"bnn train --resume {run_dir}") from None
            except BaseException:
                _stopped(plan, stage, folder, run_dir, "failed", False)
                raise
            _finished(plan, stage, folder, run_dir)
            result = stage.result
            _say(report, f"Stage {number}/{total} {stage.name} finished: test accuracy "
                         f"{result['test_accuracy']:.4f} after {result['epochs']} epochs, "
                         f"{result['wall_time_s']:.1f} s")
        final = run_dir / plan.stages[-1].folder
        # The final files and the finished plan as one step Ctrl-C and SIGTERM do not split.
        with signals.deferred_signals() as received:
            for name in FINAL_FILES:
                with files.atomic_path(run_dir / name) as tmp:
                    shutil.copyfile(final / name, tmp)
            plan.status = "finished"
            plan.write(run_dir)
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    if received:
        raise TrainingInterruptedError(
            f"{received[0]} arrived while the finished staged run was being saved; it was "
            f"saved first, and {run_dir} is complete ({total} stages).")
    return StagedResult(run_dir=run_dir, metrics=metrics, plan=plan)


def _finished(plan: StagedPlan, stage: PlannedStage, folder: Path, run_dir: Path, *,
              write: bool = True) -> None:
    """Records the finished stage in folder `folder`, with its result, in stages.json."""
    metrics = json.loads((folder / METRICS_FILE).read_text())
    stage.status = "finished"
    stage.result = {key: metrics.get(key) for key in ("test_accuracy", "epochs", "wall_time_s")}
    if write:
        plan.write(run_dir)


def _stopped(plan: StagedPlan, stage: PlannedStage, folder: Path, run_dir: Path, status: str,
             stage_finished: bool) -> None:
    """Records that the run stopped (`status`) in `stage`, which may have finished first."""
    # Written even while a second Ctrl-C is pressed: stages.json must say where the run is.
    with signals.deferred_signals():
        if stage_finished:
            _finished(plan, stage, folder, run_dir, write=False)
        else:
            stage.status = status
        plan.status = status
        plan.write(run_dir)


def _describe(stage: PlannedStage) -> str:
    options = ", ".join(f"{k}={json.dumps(v)}" for k, v in stage.config.model_options.items())
    parts = [f"model options {options}" if options else "model defaults",
             f"{stage.recipe.optimizer} lr {stage.recipe.learning_rate:g}, "
             f"{stage.recipe.schedule}, {stage.config.epochs} epochs"]
    if stage.start_from:
        parts.append(f"from {stage.start_from}'s weights")
    if stage.config.teacher is not None:
        teacher = stage.config.teacher if stage.teacher == _user_teacher() else stage.teacher
        parts.append(f"distilled from {teacher} ({stage.config.distill_loss})")
    return "; ".join(parts)


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not there, or not empty: leave it


def _say(report: Optional[Report], line: str) -> None:
    if report is not None:
        report(line)
