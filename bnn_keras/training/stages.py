"""Staged training recipes: a paper's stages trained in order as one resumable run.

Some papers train in stages, each a full training run that starts from an earlier stage's
weights or distils from an earlier stage: ReActNet's two steps (binary activations with real
weights, then binary weights), Real-to-Binary Net's ResNet-18 teacher -> float -> binary
activations -> binary network. A registry entry carries them as plain data
(`models.recipes.StagedRecipe`); `bnn train MODEL --recipe paper` on such a model trains
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
folder as its teacher (`TrainConfig.teacher`). A stage whose paper teacher is "a float model"
(ReActNet's) takes the classifier of the user's `teacher`, and learns from the labels alone
without one (`StagedPlan.notes` says so). The user's teacher is copied into RUN_DIR/inputs
when the staged run starts (`run_inputs`), so every stage distils from that one file, however
the original changes. stages.json records each stage's folder, weights and teacher relative to
RUN_DIR, and a stage's paths are found from RUN_DIR when it starts (each stage then keeps its
own copy, `run_inputs`), so a staged run moved or copied elsewhere trains from its own stages.

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
from bnn_keras.training import recipes, run_inputs, run_lock, signals
from bnn_keras.training.config import (
    BEST_MODEL_FILE, CONFIG_FILE, HISTORY_FILE, LAST_MODEL_FILE, METRICS_FILE, MODEL_FILE,
    RECIPE_OVERRIDES, TrainConfig,
    config_from_dict, merged_recipe, resolve_recipe,
)

STAGES_FILE = "stages.json"
STAGES_DIR = "stages"
# stages.json's layout.
STAGES_FORMAT_VERSION = 1
# The final stage's files that the staged run's folder gets, in the order they are copied
# (model.keras last: a folder with it and metrics.json reads as a finished run).
FINAL_FILES = (HISTORY_FILE, CONFIG_FILE, METRICS_FILE, MODEL_FILE)
# The distillation options: each stage sets them itself.
DISTILL_OPTIONS = ("distill_loss", "distill_weight", "distill_temperature",
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
        teacher: The earlier stage it distils from, `models.recipes.USER_TEACHER` (the user's),
            or None.
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
        teacher_sha256: The sha256 of the user's teacher's model file, as copied into
            RUN_DIR/inputs when the run started; None without a teacher (or for a staged run
            of an earlier bnn, which kept no copy).
    """

    model: str
    source: str
    options: TrainConfig
    stages: List[PlannedStage]
    notes: List[str] = dataclasses.field(default_factory=list)
    status: str = "running"
    teacher_sha256: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        values = {"format_version": STAGES_FORMAT_VERSION, "model": self.model,
                  "source": self.source, "status": self.status, "notes": list(self.notes),
                  "options": dataclasses.asdict(self.options),
                  "stages": [stage.to_dict() for stage in self.stages]}
        if self.teacher_sha256 is not None:
            values["teacher_sha256"] = self.teacher_sha256
        return values

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
            return _checked_plan(values, source)
        except (KeyError, TypeError, ValueError, AttributeError, BnnError) as exc:
            reason = str(exc) if isinstance(exc, (BnnError, ValueError)) else (
                f"{exc.__class__.__name__}: {exc}")
            raise BnnError(f"{source} is damaged ({reason}); restore it, or start a new "
                           "run.") from None

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


# What stages.json's statuses may be.
PLAN_STATUSES = ("running", "interrupted", "failed", "finished")
STAGE_STATUSES = ("pending", *PLAN_STATUSES)


def _checked_plan(values: Mapping[str, Any], source: str) -> StagedPlan:
    """The plan of stages.json's content, every value checked (a ValueError or BnnError
    says which)."""
    for key, kind in (("model", str), ("source", str), ("status", str), ("notes", list),
                      ("stages", list)):
        if not isinstance(values[key], kind):
            raise ValueError(f"{key!r} is not a {'list' if kind is list else 'string'}")
    if values["status"] not in PLAN_STATUSES:
        raise ValueError(f"status {values['status']!r} is not one of {', '.join(PLAN_STATUSES)}")
    if not values["stages"]:
        raise ValueError("it lists no stages")
    sha = values.get("teacher_sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
        raise ValueError("'teacher_sha256' is not a sha256")
    stages = [_checked_stage(stage, number, source)
              for number, stage in enumerate(values["stages"], start=1)]
    for number, stage in enumerate(stages, start=1):
        earlier = [s.name for s in stages[:number - 1]]
        if stage.start_from is not None and stage.start_from not in earlier:
            raise ValueError(f"stage {number} starts from {stage.start_from!r}, which is not an "
                             "earlier stage")
        if stage.teacher not in (None, _user_teacher(), *earlier):
            raise ValueError(f"stage {number} distils from {stage.teacher!r}, which is not an "
                             "earlier stage")
    return StagedPlan(
        model=values["model"], source=values["source"],
        options=config_from_dict(values["options"], source=f"{source} options"),
        stages=stages, notes=[str(note) for note in values["notes"]],
        status=values["status"], teacher_sha256=sha)


def _checked_stage(values: Any, number: int, source: str) -> PlannedStage:
    if not isinstance(values, dict):
        raise ValueError(f"stage {number} is not an object")
    for key in ("name", "folder", "status"):
        if not isinstance(values.get(key), str):
            raise ValueError(f"stage {number}'s {key!r} is not a string")
    if values["status"] not in STAGE_STATUSES:
        raise ValueError(f"stage {number}'s status {values['status']!r} is not one of "
                         f"{', '.join(STAGE_STATUSES)}")
    folder = Path(values["folder"])
    # A stage folder is a folder of this run: a path that leads elsewhere is never followed.
    if folder.is_absolute() or ".." in folder.parts or folder.parts[:1] != (STAGES_DIR,):
        raise ValueError(f"stage {number}'s folder {values['folder']!r} is not inside "
                         f"{STAGES_DIR}/")
    for key in ("start_from", "teacher"):
        if values.get(key) is not None and not isinstance(values[key], str):
            raise ValueError(f"stage {number}'s {key!r} is not a string")
    if not isinstance(values.get("recipe"), dict):
        raise ValueError(f"stage {number}'s 'recipe' is not an object")
    return PlannedStage(
        name=values["name"], folder=values["folder"],
        config=config_from_dict(values.get("config"), source=f"{source} stage {number}"),
        recipe=recipes.Recipe.from_dict(values["recipe"]),
        start_from=values.get("start_from"),
        teacher=(_user_teacher() if values.get("teacher") == _EARLIER_USER_TEACHER
                 else values.get("teacher")),
        note=str(values.get("note", "")), status=values["status"],
        result=values.get("result") if isinstance(values.get("result"), dict) else None)


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
    from bnn_keras.training import binarized

    if model == binarized.BINARIZED:
        return binarized.STAGED_RECIPE  # a user's float model, binarized (`bnn binarize`)
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


def plan_stages(config: TrainConfig) -> StagedPlan:
    """The staged run of `config` (`recipe="paper"` on a model with a staged recipe), every
    stage's options checked; no file is read or written. Its paths are relative to the staged
    run's folder, wherever that is.

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
        try:
            recipe = merged_recipe(recipes.Recipe.from_paper(stage.recipe), config)
        except BnnError as exc:
            raise _stage_error(stage.name, config.model, exc) from None
        # Paths relative to the staged run (the user's teacher as given): `_stage_config`
        # finds each from the run's folder when the stage starts.
        if stage.teacher is None:
            teacher = None
        elif stage.teacher == _user_teacher():
            teacher = config.teacher
        else:
            teacher = folders[stage.teacher]
        unknown = sorted(set(stage.train_options) - known_fields)
        if unknown:  # a plan that names options this TrainConfig does not have
            raise ValueError(f"Stage {stage.name!r} of {config.model} sets unknown TrainConfig "
                             f"fields {unknown}.")
        stage_config = dataclasses.replace(
            config, recipe="paper",
            model_options={**config.model_options, **stage.model_options},
            epochs=recipe.epochs, batch_size=recipe.batch_size,
            **{key: getattr(recipe, key) for key in RECIPE_OVERRIDES},
            weights=(None if stage.start_from is None
                     else f"{folders[stage.start_from]}/{MODEL_FILE}"),
            teacher=teacher,
            **(dict(stage.train_options) if teacher is not None else {}),
        )
        try:
            stage_config, _ = resolve_recipe(stage_config)
            # The schedule's checks (a warm-up longer than the run), before any stage trains.
            recipes.build_schedule(recipe, steps_per_epoch=config.steps_per_epoch or 1000,
                                   epochs=recipe.epochs)
        except BnnError as exc:
            raise _stage_error(stage.name, config.model, exc) from None
        planned.append(PlannedStage(name=stage.name, folder=folders[stage.name],
                                    config=stage_config, recipe=recipe,
                                    start_from=stage.start_from, teacher=stage.teacher,
                                    note=stage.note))
    return StagedPlan(model=config.model, source=staged.source, options=config,
                      stages=planned, notes=notes)


def _stage_error(stage: str, model: str, exc: BnnError) -> BnnError:
    return BnnError(f"Stage {stage} of {model}'s staged recipe: {exc}")


def _user_teacher() -> str:
    from models.recipes import USER_TEACHER

    return USER_TEACHER


# How stages.json named the user's teacher until bnn 0.3.0 (the option's spelling); read as
# `USER_TEACHER`, so that a staged run started by those versions still resumes.
_EARLIER_USER_TEACHER = "--teacher"


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
    for option in DISTILL_OPTIONS:
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
    plan = plan_stages(config)
    teacher = Teacher.of(config)  # the user's teacher exists, before any folder is made
    if run_dir.is_dir():
        run_lock.refuse_used_folder(run_dir)
    with run_lock.RunFolderLock(run_dir, create=True):
        run_lock.refuse_used_folder(run_dir, locked_by_us=True)
        for note in plan.notes:
            _say(report, f"Note: {note}")
        try:
            if teacher is not None and _uses_user_teacher(plan):
                # One copy for every stage: a file changed later is never mixed in.
                plan.teacher_sha256 = teacher.freeze(run_dir).sha256
            plan.write(run_dir)
            return _train_stages(plan, run_dir, verbose=verbose, report=report,
                                 callbacks=callbacks)
        except BaseException as exc:
            if (run_dir / plan.stages[0].folder).exists():
                raise
            # Refused or stopped before the first stage made its folder: leave nothing behind
            # (the lock removes the folder it created once it is empty).
            (run_dir / STAGES_FILE).unlink(missing_ok=True)
            run_inputs.remove_inputs(run_dir)
            _remove_empty(run_dir / STAGES_DIR)
            if isinstance(exc, TrainingInterruptedError):
                raise TrainingInterruptedError(
                    "Training interrupted before its first stage began; nothing was "
                    "kept.") from None
            raise


def resume_staged(run_dir: Union[str, Path], *, verbose: int = 1,
                  report: Optional[Report] = None,
                  callbacks: Optional[Mapping[str, Sequence[tf.keras.callbacks.Callback]]] = None,
                  teacher: Optional[str] = None) -> StagedResult:
    """Continues a staged run: the stage that was interrupted, then the remaining ones.

    Args:
        run_dir: The staged run's folder (with stages.json).
        verbose, report, callbacks: As for `train_staged`.
        teacher: For a staged run of an earlier bnn, which kept no copy of the user's teacher:
            that teacher by any path (used when it is the file its stages recorded).

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
        return _train_stages(plan, run_dir, verbose=verbose, report=report, callbacks=callbacks,
                             teacher=teacher)


def _train_stages(plan: StagedPlan, run_dir: Path, *, verbose: int, report: Optional[Report],
                  callbacks, teacher: Optional[str] = None) -> StagedResult:
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
                                    callbacks=extra, report=report)
                else:
                    train(_stage_config(plan, stage, run_dir, teacher), None, folder,
                          recipe=stage.recipe, verbose=verbose, callbacks=extra, report=report)
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
            # The final stage's other epoch (best.keras or last.keras, `keep`) when it has one.
            others = [name for name in (BEST_MODEL_FILE, LAST_MODEL_FILE)
                      if (final / name).is_file()]
            for name in (*FINAL_FILES[:-1], *others, FINAL_FILES[-1]):
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


def _uses_user_teacher(plan: StagedPlan) -> bool:
    return any(stage.teacher == _user_teacher() for stage in plan.stages)


def _stage_config(plan: StagedPlan, stage: PlannedStage, run_dir: Path,
                  given_teacher: Optional[str]) -> TrainConfig:
    """The options a stage starts with: its weights and teacher found from the staged run's
    folder as it is now (an earlier stage's model.keras and run folder, the run's copy of the
    user's teacher), never from a path recorded elsewhere."""
    run_dir = run_dir.absolute()  # config.json records where each input came from
    folders = {s.name: run_dir / s.folder for s in plan.stages}
    weights = None if stage.start_from is None else folders[stage.start_from] / MODEL_FILE
    if stage.teacher is None or stage.config.teacher is None:
        teacher = None
    elif stage.teacher == _user_teacher():
        teacher = _user_teacher_copy(plan, run_dir, given_teacher)
    else:
        teacher = folders[stage.teacher]
    return dataclasses.replace(stage.config, weights=None if weights is None else str(weights),
                               teacher=None if teacher is None else str(teacher))


def recorded_teacher_sha256(plan: StagedPlan, run_dir: Union[str, Path]) -> Optional[str]:
    """The sha256 of the staged run's user teacher: stages.json's, or for a staged run of an
    earlier bnn the one its first started stage that distils from it recorded; None when no
    such stage has started."""
    from bnn_keras.training.config import RunRecord

    if plan.teacher_sha256 is not None:
        return plan.teacher_sha256
    for stage in plan.stages:
        folder = Path(run_dir) / stage.folder
        if stage.teacher == _user_teacher() and (folder / CONFIG_FILE).is_file():
            return RunRecord.read(folder).teacher_sha256
    return None


def _user_teacher_copy(plan: StagedPlan, run_dir: Path, given: Optional[str]) -> Path:
    """The staged run's copy of the user's teacher (RUN_DIR/inputs), checked by its sha256.

    A staged run of an earlier bnn kept no copy: the teacher is copied from its recorded path
    (or `given`, by any path) then, and must be the file its earlier stages recorded.

    Raises:
        BnnError: the copy changed, or no file is the recorded teacher.
    """
    from bnn_keras.training.starting_point import Teacher

    if plan.teacher_sha256 is not None:
        copy = run_inputs.read_frozen(run_dir, run_inputs.TEACHER, plan.teacher_sha256,
                                      "`teacher`")
        if copy is None:
            raise BnnError(f"Staged run {run_dir} has lost its copy of `teacher` "
                           f"{plan.options.teacher} ({run_inputs.INPUTS_DIR}/); restore the run "
                           "folder from a copy, or start a new run.")
        return copy.path
    teacher = Teacher.first_of((given, plan.options.teacher),
                               recorded_teacher_sha256(plan, run_dir))
    if teacher is not None:
        copy = teacher.freeze(run_dir)
        plan.teacher_sha256 = copy.sha256
        plan.write(run_dir)
        return copy.path
    raise BnnError(f"Staged run {run_dir} distils from `teacher` {plan.options.teacher}, which is "
                   "not there or has changed since its first stage used it (sha256); give the "
                   "same teacher with `teacher` PATH to resume the run, or start a new run.")


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
