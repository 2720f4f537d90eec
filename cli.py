"""The `bnn` command: train a BNN, convert it for ARM with Larq Compute Engine, run it.

Every command parses options, calls the `bnn_keras`, `models` and `convert` packages, and
prints. A `BnnError` (bad input the user can fix) becomes one line on stderr and exit code 2;
any other failure becomes one line and exit code 1. `bnn --debug ...` shows the traceback.
"""

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import click

import bnn_keras  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# The import above has run, so TensorFlow resolves to tf-keras from here on.
from bnn_keras import BnnError  # noqa: E402
from bnn_keras.binarization import RELU_CHOICES, SHORTCUT_CHOICES  # noqa: E402
from bnn_keras.errors import first_line, storage_error_message  # noqa: E402
from bnn_keras.options import ANY_PATH, EXISTING_FILE, FOLDER  # noqa: E402
from convert.options import ConvertOptions  # noqa: E402

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command whose reader left


class BnnGroup(click.Group):
    """A click group that turns exceptions into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            # The reader stopped reading (`bnn models | head`): not a failure of bnn's, so no
            # message; the exit code is a shell's for SIGPIPE, as for any command cut short.
            # Python's final flush of stdout would fail again: it goes to /dev/null instead.
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_BROKEN_PIPE)
        except Exception as exc:  # the one place that decides how failures look
            if ctx.params.get("debug"):
                raise
            if isinstance(exc, BnnError):
                click.echo(f"Error: {self._spelled(ctx, str(exc))}", err=True)
                ctx.exit(getattr(exc, "exit_code", EXIT_USER_ERROR))
            storage = storage_error_message(exc)  # read-only, permissions, disk full
            if storage:
                click.echo(f"Error: {storage}", err=True)
                ctx.exit(EXIT_USER_ERROR)
            message = first_line(exc) if str(exc).strip() else ""
            click.echo(
                f"Internal error: {type(exc).__name__}: {message} (rerun with --debug for the traceback)",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL_ERROR)

    def _spelled(self, ctx: click.Context, message: str) -> str:
        """A library message with the fields it names in backticks (`learning_rate`) spelled
        as the command's options (--learning-rate) and arguments (MODEL).

        The library names `TrainConfig` fields and its functions' parameters; the commands'
        parameters carry the same names (`bnn train`'s are generated from the fields' metadata,
        `bnn_keras.options`), so the mapping is read off the invoked command.
        """
        from bnn_keras import options

        name = ctx.invoked_subcommand
        command = self.get_command(ctx, name) if name else None
        spellings: Dict[str, str] = {}
        for param in command.params if command else ():
            if isinstance(param, click.Option):
                spelled = _option_flag(param)
                # By its long options too: `output` is --output although `bnn train` names its
                # value run_dir.
                spellings.update({opt[2:].replace("-", "_"): spelled for opt in param.opts
                                  if opt.startswith("--")})
                spellings[param.name] = spelled
            else:
                spellings[param.name] = param.human_readable_name
        return options.spell_fields(message, spellings)


@click.group(cls=BnnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(bnn_keras.__version__, prog_name="bnn")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """Train binarized neural networks in Keras and run them on ARM with Larq Compute Engine.

    \b
    Typical flow:
      bnn train binary-densenet28 --dataset digits --epochs 3 --output runs/digits
      bnn convert runs/digits --target arm64 -o model.tflite
      bnn evaluate model.tflite
      bnn benchmark model.tflite --threads 1 --runs 50
    """
    if not debug:
        _quiet_library_logs()


def _quiet_library_logs() -> None:
    """One-line warnings of ours; TensorFlow's (and TFDS' absl) loggers only for errors, so
    that a failure stays one line on stderr."""
    import logging
    import warnings

    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)

    def show(message, category, filename, lineno, file=None, line=None):
        click.echo(f"Warning: {message}", err=True)

    warnings.showwarning = show


def _on_terminal(stream) -> bool:
    """Whether `stream` is a terminal: progress bars (carriage-return frames) go only there,
    never into a log file or a pipe."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def _echo_table(rows, headers) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in (headers, *rows):
        click.echo("  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                             for i, (v, w) in enumerate(zip(row, widths))).rstrip())


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------


def _config_options(config_type: type) -> Callable:
    """Decorator: one click option (or argument) per field of a config dataclass.

    Help, default, choices and spelling come from the field (`bnn_keras.options.option`), so
    `bnn train --help` and `TrainConfig` cannot disagree.
    """
    from bnn_keras import options

    def decorate(command: Callable) -> Callable:
        for field in reversed(dataclasses.fields(config_type)):
            meta = field.metadata
            kind = meta.get("cli", options.OPTION)
            if kind == options.NESTED:
                command = _config_options(meta["nested"])(command)
            elif kind == options.ARGUMENT:
                command = click.argument(field.name, metavar=field.name.upper(),
                                         required=False)(command)
            else:
                command = _field_option(field, kind)(command)
        return command

    return decorate


def _config_fields(config_type: type, *names: str) -> Callable:
    """Decorator: the click options of some fields of a config dataclass, as
    `_config_options` declares them (for a command that takes a few of `bnn train`'s)."""
    from bnn_keras import options

    fields = {field.name: field for field in dataclasses.fields(config_type)}

    def decorate(command: Callable) -> Callable:
        for name in reversed(names):
            command = _field_option(fields[name], options.OPTION)(command)
        return command

    return decorate


def _field_option(field: dataclasses.Field, kind: str) -> Callable:
    """The click option of one config field."""
    from bnn_keras import options

    meta = field.metadata
    spelled = options.flag(field)
    value_type = _value_type(field.type)
    settings: Dict[str, Any] = dict(help=meta["help"], show_default=meta["show_default"])
    if kind == options.KEY_VALUE:
        settings.update(multiple=True, metavar=meta["metavar"], show_default=False)
    elif value_type is bool and meta["negatable"]:
        spelled = f"{spelled}/--no-{spelled[2:]}"
        settings["default"] = field.default
    elif value_type is bool:
        settings.update(is_flag=True, default=field.default)
    else:
        settings["default"] = field.default
        settings["show_default"] = meta["show_default"] and field.default is not None
        if meta["choices"]:
            settings["type"] = click.Choice(meta["choices"])
        elif meta["path"]:
            settings["type"] = _PATH_TYPES[meta["path"]]
        else:
            settings["type"] = value_type
        if meta["metavar"]:
            settings["metavar"] = meta["metavar"]
    return click.option(field.name, spelled, *meta["aliases"], **settings)


# click's type for each kind of path option (`bnn_keras.options.option(path=...)`).
_PATH_TYPES = {FOLDER: click.Path(file_okay=False),
               EXISTING_FILE: click.Path(exists=True, dir_okay=False),
               ANY_PATH: click.Path()}


def _value_type(annotation: Any) -> type:
    """`Optional[int]` -> int, `bool` -> bool, `Dict[...]` -> dict; a field that the library
    takes in several forms (`Union[str, Sequence[float]]`) is a string on the command line."""
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union:
        return args[0] if len(args) == 1 else str
    return typing.get_origin(annotation) or annotation


def _train_config(model: str, values: Dict[str, Any]):
    """The TrainConfig of `bnn train`'s parsed options (tricks and --model-option included)."""
    from bnn_keras import options, training

    fields = {}
    for field in dataclasses.fields(training.TrainConfig):
        kind = field.metadata.get("cli")
        if kind == options.ARGUMENT:
            fields[field.name] = model
        elif kind == options.NESTED:
            nested = field.metadata["nested"]
            fields[field.name] = nested(**{f.name: values[f.name]
                                           for f in dataclasses.fields(nested)}).recorded()
        elif kind == options.KEY_VALUE:
            fields[field.name] = _parse_model_options(values[field.name])
        else:
            value = values[field.name]
            fields[field.name] = None if field.metadata["zero_means_none"] and not value else value
    return training.TrainConfig(**fields)


trust_model_code_option = click.option(
    "--trust-model-code", "trust_model_code", is_flag=True,
    help="Load a model file that carries Python code (a Lambda layer), which loading runs. "
         "Without it such a file is refused: model files are data. Only for files whose "
         "source you trust: a file from elsewhere can run anything with your permissions.")


def _use_trust_model_code(trust: bool) -> None:
    """Trusts model files until the command ends: the conversion loads its model through the
    library, which reads the enclosing scope (`model_files.trusting_model_code`)."""
    if trust:
        from bnn_keras import model_files

        click.get_current_context().with_resource(model_files.trusting_model_code())


verbose_option = click.option(
    "--verbose", type=click.IntRange(0, 2), default=None,
    help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch [default: 1 on "
         "a terminal, 2 when the output goes to a file or pipe].")


@main.command()
@_config_options(__import__("bnn_keras.training", fromlist=["TrainConfig"]).TrainConfig)
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False),
              default=None,
              help="Continue a run folder from its last complete epoch, with MODEL and the "
                   "options recorded in its config.json (other values are refused); with "
                   "--epochs N, extend a finished or interrupted run to N epochs.")
@click.option("--output", "-o", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder to create [default: runs/MODEL-DATASET].")
@verbose_option
@click.option("--custom-objects", "custom_objects", multiple=True, metavar="MODULE[:DICT]",
              help="For a --teacher model file with custom layers: a module whose import "
                   "registers them, MODULE:DICT naming a dict of them, or a .py file "
                   "(repeatable; give it again with --resume).")
@trust_model_code_option
def train(model: Optional[str], resume_dir: Optional[str], run_dir: Optional[str],
          verbose: Optional[int], custom_objects: Sequence[str], trust_model_code: bool,
          **values: Any) -> None:
    """Train MODEL (a name from `bnn models`) and write a run folder.

    The run folder holds model.keras, config.json (every option), history.csv, flips.csv and
    flips.png (sign flips per binary layer), status.json, backup/ (the last complete epoch,
    for --resume) and metrics.json (final accuracy, wall time, images/s). Ctrl-C keeps the
    last complete epoch: continue with `bnn train --resume RUN_DIR`, or train a finished run
    further with `bnn train --resume RUN_DIR --epochs N`. One process at a time trains in a
    run folder. A run folder is self-contained: it keeps a copy of its --weights file and
    --teacher in inputs/, so it can be moved or copied and resumed there.

    With --weights FILE (a larq-zoo .h5, or a weights file of this model) the model starts from
    that file: it must fit the model at this input size and number of classes (checked before
    the run folder is made), and config.json records its path, sha256 and the model variant
    it selected, so --resume needs only the run folder.

    With --float, MODEL's float copy is trained instead (its quantizers removed, --input-activation
    where the input quantizers were). With --teacher RUN_DIR|MODEL_FILE (e.g. a --float run),
    MODEL learns from that frozen classifier too (--distill-loss kl or distribution,
    --distill-weight, --distill-temperature); the run folder's model.keras is MODEL alone.
    history.csv and metrics.json record each epoch's wall time and the run's time at its end
    (resumes included). Before the first epoch the plan is printed as resolved (data and where
    it is read from, model, recipe and its source, precision); at the end, each figure says
    what it is: the float32 model's test accuracy (as deployed), the training precision's, the
    best epoch against the last on the same basis, the steady-state training rate.

    With --recipe paper, a model whose paper trains in stages (reactnet-a, real-to-binary-net,
    strong-baseline-net) trains every stage in order as one run: each a run folder
    RUN_DIR/stages/N-NAME, starting from or distilled from earlier stages as the paper does
    (ReActNet's from --teacher, if given), with the options given here applied to every
    stage; RUN_DIR/stages.json records the plan, and RUN_DIR gets the final stage's
    model.keras, config.json, metrics.json and history.csv. `bnn train --resume RUN_DIR`
    continues the interrupted stage, then the remaining ones.
    """
    import models
    from bnn_keras import training
    from bnn_keras.training import stages

    _use_custom_objects(custom_objects)
    _use_trust_model_code(trust_model_code)  # for --teacher (and give it again with --resume)
    if verbose is None:  # a progress bar's carriage-return frames only where they redraw
        verbose = 1 if _on_terminal(sys.stdout) else 2

    if resume_dir and stages.staged_run_of_stage(resume_dir) is not None:
        whole = stages.staged_run_of_stage(resume_dir)
        raise BnnError(f"{resume_dir} is a stage of the staged run {whole}; continue the run "
                       f"with `bnn train --resume {whole}`.")
    if resume_dir and stages.is_staged_run(resume_dir):
        plan = stages.StagedPlan.read(resume_dir)
        if values["epochs"] is not None:
            raise BnnError(f"--epochs applies to every stage of the staged run {resume_dir} "
                           "and cannot change once it has started; resume it without --epochs.")
        _refuse_resume_changes(click.get_current_context(), plan.options, Path(resume_dir),
                               teacher_sha256=stages.recorded_teacher_sha256(plan, resume_dir))
        result = stages.resume_staged(Path(resume_dir), verbose=verbose,
                                      report=_spelled_echo(click.get_current_context()),
                                      teacher=values["teacher"])
    elif resume_dir:
        # config.json is read once, here; the library trusts this record (and refuses to go on
        # should the file change before the run folder is locked).
        record = training.RunRecord.read(resume_dir)
        config = record.config
        _refuse_resume_changes(click.get_current_context(), config, Path(resume_dir),
                               teacher_sha256=record.teacher_sha256,
                               weights_sha256=record.weights_sha256)
        done = training.run_progress(Path(resume_dir), record).epochs_done
        epochs = values["epochs"]
        target = epochs or config.epochs
        click.echo(f"Resuming {resume_dir}: {config.model} on {config.dataset}, {done} of "
                   f"{target} epochs done"
                   + (f" (extended from {config.epochs})" if target != config.epochs else ""))
        # The registry model as recorded (the variant a weights file selected included).
        result = training.resume_training(Path(resume_dir), None, epochs=epochs, record=record,
                                          teacher=values["teacher"], verbose=verbose,
                                          report=_spelled_echo(click.get_current_context()))
    else:
        if not model:
            raise click.UsageError("Missing MODEL (or --resume RUN_DIR).")
        models.get_model_fn(model)  # fail fast on a bad name, before loading any data
        config = _train_config(model, values)
        output = Path(run_dir or f"runs/{model}-{config.dataset}")
        if config.recipe == "paper" and stages.staged_recipe(model) is not None:
            # Options are checked for every stage before any data is loaded.
            result = stages.train_staged(config, output, verbose=verbose,
                                         report=_spelled_echo(click.get_current_context()))
        else:
            training.resolve_recipe(config)  # bad options fail here, before any data is loaded
            # None: the registry model, with --model-option, --weights and the tricks.
            result = training.train(config, None, output, verbose=verbose,
                                    report=_spelled_echo(click.get_current_context()))
    from bnn_keras.training.report import run_summary_lines

    click.echo(f"Run folder: {result.run_dir}")
    for line in run_summary_lines(result.metrics):
        click.echo(line)


def _spelled_echo(ctx: click.Context) -> Callable[[str], None]:
    """click.echo for library lines that name options in backticks (spelled as flags, as
    `BnnGroup` spells errors; `ctx` is the command's, its parent the group's)."""
    return lambda line: click.echo(main._spelled(ctx.parent or ctx, line))


# `bnn train` options that --resume may be given: --epochs extends or shortens the run (it is
# recorded), the others only change how this process reports.
_RESUME_MAY_CHANGE = {"resume_dir", "epochs", "verbose", "custom_objects", "trust_model_code"}


def _refuse_resume_changes(ctx: click.Context, config, run_dir: Path, *,
                           teacher_sha256: Optional[str] = None,
                           weights_sha256: Optional[str] = None) -> None:
    """Refuses `--resume RUN` with MODEL or options that differ from the run's config.json.

    A resumed run must train what it started with, so that it ends where the uninterrupted run
    would have; an option the user typed that says otherwise is an error, not silently ignored.
    A --teacher or --weights file is the same when its content is (the sha256 the run
    recorded), whatever path names it.
    """
    from click.core import ParameterSource

    typed = {param.name: param for param in ctx.command.params
             if param.name not in _RESUME_MAY_CHANGE and ctx.get_parameter_source(param.name)
             not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
    if not typed:
        return
    differences = []
    output = typed.pop("run_dir", None)
    if output and Path(ctx.params["run_dir"]).resolve() != run_dir.resolve():
        differences.append(f"--output {ctx.params['run_dir']} is not the resumed folder {run_dir}")
    # What the typed options would record, against what the run recorded.
    from bnn_keras.training.tricks import TRICKS

    wanted = _train_config(ctx.params["model"] or config.model,
                           {**_recorded_values(config), **{n: ctx.params[n] for n in typed}})
    for name, param in typed.items():
        if name in TRICKS:
            mine, theirs = wanted.tricks.get(name), config.tricks.get(name)
        else:
            mine, theirs = getattr(wanted, name), getattr(config, name)
        recorded_sha = {"teacher": teacher_sha256, "weights": weights_sha256}.get(name)
        if recorded_sha is not None and mine is not None and _file_sha256(name, mine) == recorded_sha:
            continue  # the same file, by another path
        if mine != theirs:
            what = "MODEL" if name == "model" else _option_flag(param)
            differences.append(f"{what} {_shown(mine)} (the run has {_shown(theirs)})")
    if differences:
        raise BnnError(
            f"--resume {run_dir} continues the run as recorded in its config.json, but "
            f"{'; '.join(differences)}. Drop those options (only --epochs may change), or start "
            "a new run with --output."
        )


def _file_sha256(option: str, path: str) -> Optional[str]:
    """The sha256 of the --teacher (a run folder's model.keras) or --weights file `path`, or
    None when it cannot be read (then it differs from the run's)."""
    from bnn_keras.training.starting_point import Teacher, weights_sha256

    try:
        return Teacher.of_path(path).sha256 if option == "teacher" else weights_sha256(path)
    except BnnError:
        return None


def _recorded_values(config) -> Dict[str, Any]:
    """A run's config as `bnn train`'s option values (the inverse of `_train_config`)."""
    from bnn_keras.training.tricks import Tricks

    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    values.update(dataclasses.asdict(Tricks.from_recorded(config.tricks)))
    values["model_options"] = [f"{k}={json.dumps(v)}" for k, v in config.model_options.items()]
    return values


def _option_flag(param: click.Parameter) -> str:
    return max(param.opts, key=len) if param.opts else param.name


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


# A VALUE starting like this (or one of the JSON words) is meant as JSON: a typo in it is an
# error, not a string (`stage_filters=[16,32` would otherwise reach the model as 8 characters).
_JSON_START = tuple('[{"-0123456789')
_JSON_WORDS = ("true", "false", "null")


def _parse_model_options(pairs: Sequence[str]) -> Dict[str, Any]:
    """`("stage_filters=[16,32]", "growth_rate=32")` -> keyword arguments (JSON values).

    A VALUE that is not JSON and does not look like it (a plain word) stays a string.

    Raises:
        click.BadParameter: no `=`, or a VALUE that looks like JSON and does not parse; the
            message gives the JSON error and its column.
    """
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}",
                                     param_hint="--model-option")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            stripped = text.strip()
            if stripped.startswith(_JSON_START) or stripped.lower() in _JSON_WORDS:
                hint = (f" (JSON spells it {stripped.lower()})"
                        if stripped.lower() in _JSON_WORDS else "")
                raise click.BadParameter(
                    f"invalid JSON {text!r} at column {exc.colno}: {exc.msg}{hint}",
                    param_hint=f"--model-option {key.strip()}",
                ) from None
            value = text
        options[key.strip().replace("-", "_")] = value
    return options


# ----------------------------------------------------------------------------------------------
# binarize
# ----------------------------------------------------------------------------------------------


custom_objects_option = click.option(
    "--custom-objects", "custom_objects", multiple=True, metavar="MODULE[:DICT]",
    help="Model file only: a module whose import registers the model's custom Keras objects, "
         "MODULE:DICT naming a dict of them, or a .py file (repeatable; the current folder "
         "is searched).")


def _use_custom_objects(specs: Sequence[str]) -> None:
    """Imports the --custom-objects modules and makes their dicts known to Keras until the
    command ends: loading the model, and every later rebuild of its layers from their config
    (the lint's and the converter's rewrites), may need them."""
    if not specs:
        return
    import tensorflow as tf

    from convert.loading import import_custom_objects

    objects = import_custom_objects(specs)
    click.get_current_context().with_resource(tf.keras.utils.custom_object_scope(objects))



@main.command()
@click.argument("source", metavar="MODEL_FILE_OR_FLOAT_RUN", type=click.Path(exists=True))
@click.option("--output", "-o", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder to create [default: runs/binarized-DATASET].")
@click.option("--dataset", default=None,
              help="The data set the float model was trained on (as `bnn train --dataset`) "
                   "[default: a float run's].")
@click.option("--mean", default=None, metavar="M[,M,M]",
              help="Model file: the per-channel mean of the normalization it was trained with, "
                   "on raw pixels (e.g. 0 with --std 255 for pixels / 255).")
@click.option("--std", default=None, metavar="S[,S,S]",
              help="Model file: the per-channel standard deviation of that normalization.")
@click.option("--pixel-max", type=float, default=None,
              help="Model file: the raw pixel maximum --mean and --std are given for "
                   "[default: the data set's].")
@click.option("--relu", type=click.Choice(RELU_CHOICES), default="remove", show_default=True,
              help="What becomes of a ReLU that feeds a binary layer's sign (always +1 after "
                   "it).")
@click.option("--shortcuts", type=click.Choice(SHORTCUT_CHOICES), default="none",
              show_default=True,
              help="auto: a real-valued identity shortcut around each binary conv whose input "
                   "and output shapes match (Bi-Real Net).")
@click.option("--keep-first/--binarize-first", default=True, show_default=True,
              help="Keep the first conv or dense layer (it reads the image) float.")
@click.option("--keep-last/--binarize-last", default=True, show_default=True,
              help="Keep the last dense layer (the classifier) float.")
# `bnn train`'s own declarations of these options (`TrainConfig`): each step takes them.
@_config_fields(__import__("bnn_keras.training", fromlist=["TrainConfig"]).TrainConfig,
                "data_dir", "epochs", "batch_size", "learning_rate", "steps_per_epoch", "seed",
                "precision", "keep")
@verbose_option
@custom_objects_option
@trust_model_code_option
def binarize(source: str, run_dir: Optional[str], dataset: Optional[str],
             data_dir: Optional[str], mean: Optional[str], std: Optional[str],
             pixel_max: Optional[float], relu: str, shortcuts: str, keep_first: bool,
             keep_last: bool, verbose: Optional[int], custom_objects: Sequence[str],
             trust_model_code: bool, **train_values: Any) -> None:
    """Binarize a float Keras CNN and train the BNN from it, into a run folder.

    MODEL_FILE_OR_FLOAT_RUN is a Keras model file (functional or Sequential; give --dataset
    and the normalization it was trained with, --mean and --std), or the run folder of
    `bnn train MODEL --float`. Its test accuracy is printed first, with that normalization: a
    wrong one shows at once. It is then rewritten into a BNN (`bnn_keras.binarize`: binary
    convs and dense layers but the first and the classifier, a BatchNormalization after each,
    ReLUs before a sign removed or replaced, depthwise convs kept float; the report lists each
    change), and the BNN trains in ReActNet's two steps (binary activations with real weights,
    then binary weights) as one staged run, learning the float model's softmax (ReActNet's
    distribution loss); before each step, the BatchNormalizations' statistics are set from 256
    training images. The float model is copied into the run folder, so
    `bnn train --resume RUN_DIR` continues from the run alone, and `bnn convert RUN_DIR`
    converts the result. --epochs, --batch-size and --learning-rate apply to each step, over
    its recipe: ReActNet's, 10 epochs of batch 64 with Adam at 5e-4 decayed linearly.
    """
    from bnn_keras import training
    from bnn_keras.binarization import BinarizeOptions
    from bnn_keras.training import binarized, stages

    _use_custom_objects(custom_objects)
    _use_trust_model_code(trust_model_code)
    if verbose is None:
        verbose = 1 if _on_terminal(sys.stdout) else 2
    options = BinarizeOptions(keep_first=keep_first, keep_last=keep_last, relu=relu,
                              shortcuts=shortcuts)
    float_model, given = _float_source(source, dataset, data_dir, mean, std, pixel_max)
    height, width = (int(d) for d in float_model.input_shape[1:3])
    if height != width:
        raise BnnError(f"{source} takes {height}x{width} images; bnn trains square ones.")
    config = training.TrainConfig(
        model=binarized.BINARIZED, teacher=source, recipe="paper", image_size=height,
        model_options={k: v for k, v in options.to_dict().items() if k != "kernel_quantizer"},
        seed=train_values.pop("seed"), precision=train_values.pop("precision"),
        keep=train_values.pop("keep"), **given,
        **{k: v for k, v in train_values.items() if v is not None})
    _print_float_accuracy(source, float_model, config)
    from bnn_keras import binarize as binarize_model

    for line in binarize_model(float_model, options).report.lines():
        click.echo(line)
    output = Path(run_dir or f"runs/{binarized.BINARIZED}-{config.dataset}")
    result = stages.train_staged(config, output, verbose=verbose,
                                 report=_spelled_echo(click.get_current_context()))
    from bnn_keras.training.report import run_summary_lines

    click.echo(f"Run folder: {result.run_dir}")
    for line in run_summary_lines(result.metrics):
        click.echo(line)


def _float_source(source: str, dataset: Optional[str], data_dir: Optional[str],
                  mean: Optional[str], std: Optional[str], pixel_max: Optional[float]):
    """The float model of `bnn binarize`, and the TrainConfig values that describe its input:
    a float run's own, or the data set and normalization given for a model file."""
    from convert.loading import load_trained_model

    loaded = load_trained_model(source)
    _note_rebuilt(source, loaded.rebuilt_classes)
    run = loaded.run
    if run is not None:
        given = [f"--{name.replace('_', '-')}" for name, value in
                 (("mean", mean), ("std", std), ("pixel_max", pixel_max)) if value is not None]
        if given:
            raise BnnError(f"{', '.join(given)}: for a model file only; the run folder "
                           f"{source} records its normalization.")
        model_input = run.model_input
        if dataset is not None and dataset != model_input.dataset:
            raise BnnError(f"--dataset {dataset}: the run folder {source} was trained on "
                           f"{model_input.dataset}.")
        normalization = model_input.normalization
        values = dict(dataset=model_input.dataset,
                      data_dir=data_dir or model_input.data_dir,
                      normalize_mean=list(normalization.mean),
                      normalize_std=list(normalization.std),
                      normalize_pixel_max=model_input.pixel_max)
    else:
        missing = [flag for flag, value in (("--dataset", dataset), ("--mean", mean),
                                            ("--std", std)) if value is None]
        if missing:
            raise BnnError(f"{source} is a model file: give {', '.join(missing)} (the data set "
                           "and the normalization it was trained with), or binarize the run "
                           "folder of a `bnn train MODEL --float` run.")
        values = dict(dataset=dataset, data_dir=data_dir, normalize_mean=mean,
                      normalize_std=std, normalize_pixel_max=pixel_max)
    return loaded.model, {k: v for k, v in values.items() if v is not None}


def _print_float_accuracy(source: str, float_model, config) -> None:
    """The float model's test accuracy with the run's normalization, before any training."""
    import numpy as np

    from bnn_keras.training import data as data_lib
    from bnn_keras.training.run import with_given_normalization

    splits = with_given_normalization(
        data_lib.load_dataset(config.dataset, config.data_dir), config)
    channels, classes = int(float_model.input_shape[-1]), int(float_model.output_shape[-1])
    if (channels, classes) != (splits.image_shape[-1], splits.num_classes):
        raise BnnError(f"{source} takes {channels}-channel images and gives {classes} "
                       f"classes; {config.dataset} has {splits.image_shape[-1]}-channel images "
                       f"of {splits.num_classes} classes: give the data set it was trained on.")
    pipeline = data_lib.make_pipeline(splits.test, batch_size=256,
                                      normalization=splits.normalization,
                                      image_size=(config.image_size, config.image_size))
    correct = total = 0
    for images, labels in pipeline:
        predicted = np.argmax(float_model(images, training=False).numpy(), axis=-1)
        correct += int(np.sum(predicted == labels.numpy()))
        total += len(predicted)
    mean = ", ".join(f"{v:g}" for v in splits.normalization.mean)
    std = ", ".join(f"{v:g}" for v in splits.normalization.std)
    click.echo(f"Float model {source}: test accuracy {correct / max(total, 1):.4f} on "
               f"{config.dataset}'s {total:,} test images (normalized with mean {mean}, std "
               f"{std} on raw pixels)")


# ----------------------------------------------------------------------------------------------
# convert
# ----------------------------------------------------------------------------------------------


def _threads_option(ctx: click.Context, param: click.Parameter, value: int) -> int:
    """--threads between 1 and the CPUs available; more only slow LCE's interpreter down."""
    from convert.runtime import check_threads

    return check_threads(value, option="--threads")


@main.command()
@click.argument("source", metavar="RUN_DIR_OR_MODEL_FILE", type=click.Path())
@_config_options(ConvertOptions)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@custom_objects_option
@trust_model_code_option
def convert(source: str, as_json: bool, custom_objects: Sequence[str] = (),
            trust_model_code: bool = False, **values: Any) -> None:
    """Convert a trained model to an LCE flatbuffer, verify it, and report on it.

    The flatbuffer is run in LCE's interpreter on real inputs and compared with Keras. The
    report gives the size, the op counts, LceBconv2d vs binary layers, the binarized-MAC
    fraction and any float op left between two binary convolutions (a missed fusion).

    A run folder's config.json gives the class names and input normalization stored in the
    .tflite (for `bnn evaluate` and `bnn predict`). A bare model file needs them as options:
    --class-names, --mean and --std (and --pixel-max, --dataset where they apply), or
    --no-metadata for a plain .tflite.

    Outputs are checked before the conversion starts, and replaced only once the .tflite is
    verified and the bundle has passed its self-check: a refused or failed conversion leaves
    every existing file as it was.
    """
    from convert.workflow import VerificationFailedError, convert_trained_model

    options = ConvertOptions(**values)  # its checks first: nothing is loaded for a bad value
    _use_custom_objects(custom_objects)
    _use_trust_model_code(trust_model_code)
    if not as_json:
        click.echo(f"Converting {source} for target {options.target} ...")
    try:
        report = convert_trained_model(
            source, options, verbose=1 if not as_json and _on_terminal(sys.stderr) else 0)
    except VerificationFailedError as exc:
        _note_rebuilt(source, exc.report.rebuilt_classes)
        _print_report(exc.report, as_json)
        raise
    _note_rebuilt(source, report.rebuilt_classes)  # once converted: a failure says why instead
    _print_report(report, as_json)


def _print_report(report, as_json: bool) -> None:

    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())


# ----------------------------------------------------------------------------------------------
# benchmark
# ----------------------------------------------------------------------------------------------


@main.command()
@click.argument("tflite_file", type=click.Path())
@click.option("--threads", type=int, default=1, show_default=True, callback=_threads_option,
              help="Interpreter threads (1 to the number of CPUs).")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed inferences.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed inferences first.")
@click.option("--compare-float", "float_model", type=click.Path(), default=None,
              help="A float TFLite copy (or the Keras run/model to make one from) to time too.")
@trust_model_code_option
def benchmark(tflite_file: str, threads: int, runs: int, warmup: int,
              float_model: Optional[str], trust_model_code: bool = False) -> None:
    """Single-image latency of a .tflite in LCE's interpreter (min, median, p90).

    The model runs in a separate process, so a damaged file cannot crash this one. On x86 LCE
    uses portable kernels: the numbers are a regression check. On a Raspberry Pi use LCE's
    lce_benchmark_model binary (see `bnn convert --bundle`) for the real latency.
    """
    from convert.flatbuffer import Flatbuffer
    from convert.isolated import isolated_benchmark
    from convert.runtime import is_binary_model

    _use_trust_model_code(trust_model_code)  # for a --compare-float Keras model
    flatbuffer = Flatbuffer.from_file(tflite_file)
    binary = is_binary_model(flatbuffer, source=tflite_file)
    click.echo(f"Timing {tflite_file}: {warmup} warm-up + {runs} runs, {threads} thread(s) ...")
    rows = [("binary (LCE)" if binary else "float",
             isolated_benchmark(flatbuffer, threads, runs, warmup))]
    if float_model:
        from convert.float_reference import float_flatbuffer

        rows.append(("float reference", isolated_benchmark(float_flatbuffer(float_model),
                                                           threads, runs, warmup)))
    base = rows[0][1].median_ms
    for label, latency in rows:
        ratio = f", {latency.median_ms / base:.2f}x" if len(rows) > 1 else ""
        click.echo(
            f"{label}: {latency.runs} runs, {latency.threads} thread(s): median "
            f"{latency.median_ms:.2f} ms, p90 {latency.p90_ms:.2f} ms, min {latency.min_ms:.2f} ms"
            f"{ratio}"
        )


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------


@main.command()
@click.argument("tflite_file", type=click.Path())
@click.option("--dataset", default=None,
              help="Data set to evaluate on [default: the one recorded in the .tflite].")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the data set lives (TFDS data_dir).")
@click.option("--limit", type=int, default=None, help="Only the first N test images.")
@click.option("--threads", type=int, default=1, show_default=True, callback=_threads_option,
              help="Interpreter threads (1 to the number of CPUs).")
def evaluate(tflite_file: str, dataset: Optional[str], data_dir: Optional[str],
             limit: Optional[int], threads: int) -> None:
    """Top-1 accuracy of a .tflite on a data set's test split, in LCE's interpreter.

    Images are preprocessed as in training (size and normalization are stored in the .tflite
    by `bnn convert`). A data set whose classes differ from the model's is refused. A
    .unverified file (kept by `bnn convert` when the flatbuffer disagreed with Keras) is
    evaluated with a warning: its accuracy may not be the model's.
    """
    from convert.evaluate import evaluate_flatbuffer, is_unverified
    from convert.flatbuffer import Flatbuffer
    from convert.samples import flatbuffer_test_split

    flatbuffer = Flatbuffer.from_file(tflite_file)
    x, y, name = flatbuffer_test_split(flatbuffer, dataset=dataset, data_dir=data_dir, limit=limit)
    click.echo(f"Evaluating {tflite_file} on {len(x)} {name} test images ...")
    result = evaluate_flatbuffer(flatbuffer, x, y, threads=threads)  # warns if .unverified
    caveat = " (unverified: see the warning above)" if is_unverified(flatbuffer) else ""
    click.echo(f"{tflite_file}: test accuracy {result['accuracy']:.4f} on {result['n']} {name} "
               f"images{caveat}")


# ----------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------


@main.command()
@click.argument("tflite_file", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--top-k", type=int, default=3, show_default=True, help="Classes to show per image.")
@click.option("--threads", type=int, default=1, show_default=True, callback=_threads_option,
              help="Interpreter threads (1 to the number of CPUs).")
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=40_000_000, show_default=True,
              help="Refuse larger images (read from the file header before decoding, which "
                   "takes ~13 bytes per pixel).")
def predict(tflite_file: str, images, top_k: int, threads: int, as_json: bool,
            max_pixels: int) -> None:
    """Top-k labels for image files (PNG, JPEG, BMP, GIF), preprocessed as in training."""

    from convert.evaluate import image_options, predict_images
    from convert.flatbuffer import Flatbuffer

    flatbuffer = Flatbuffer.from_file(tflite_file)
    meta = flatbuffer.metadata
    if not meta:
        raise BnnError(f"{tflite_file} carries no training preprocessing (bnn metadata); "
                       "convert it from a run folder with `bnn convert RUN_DIR`.")
    predictions = predict_images(flatbuffer, list(images), top_k=top_k, threads=threads,
                                 max_pixels=max_pixels, **image_options(meta))
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in predictions], indent=2))
        return
    for p in predictions:
        best = ", ".join(f"{name} {score:.3f}" for _, name, score in p.top)
        click.echo(f"{p.path}: {best}")


# ----------------------------------------------------------------------------------------------
# models, summary
# ----------------------------------------------------------------------------------------------


@main.command("models")
@click.argument("pattern", required=False)
@click.option("--input-shape", default="224,224,3", show_default=True,
              help="Input H,W,C the statistics are computed for.")
@click.option("--num-classes", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Classes.")
@click.option("--rebuild", is_flag=True,
              help="Build the models again for their figures instead of reading the ones kept "
                   "from an earlier call (they are kept per bnn version and source, in "
                   "$BNN_CACHE_DIR or ~/.cache/bnn).")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="With one MODEL: an option of its builder for the figures (repeatable; as "
                   "`bnn train --model-option`).")
def models_command(pattern: Optional[str], input_shape: str, num_classes: int,
                   rebuild: bool, model_options: Sequence[str]) -> None:
    """List registered models (optionally matching a shell PATTERN such as '*densenet*') with
    their parameter count, binarized-MAC fraction, size with 1-bit binary weights and how they
    differ from larq-zoo's definition (`--model-option variant=larq-zoo` builds the zoo's).
    Given one model's name, also its options with their defaults, its paper recipe and how it
    differs from larq-zoo.

    The figures need each model built (about 30 s for all of them at 224 px): they are kept
    after the first call, for this bnn version and source and each input shape, and read back.
    """
    import models
    from models.figures import model_figures
    from models.input_size import input_too_small_error
    from tqdm import tqdm

    names = models.list_models(pattern)
    if not names:
        raise BnnError(f"No model matches {pattern!r}; `bnn models` lists them all.")
    shape = _parse_shape(input_shape)
    overrides = _parse_model_options(model_options)
    if overrides and names != [pattern]:
        raise BnnError("`model_options` applies to one model: give its name as PATTERN.")

    def progress(missing):
        return tqdm(missing, desc="building", unit="model", file=sys.stderr, leave=False,
                    disable=not _on_terminal(sys.stderr))

    figures = model_figures(names, shape, num_classes, rebuild=rebuild, progress=progress,
                            overrides=overrides)
    rows, too_small = [], []
    for name in names:
        f = figures[name]
        if f.too_small is not None:
            too_small.append((name, ValueError(f.too_small)))
            continue
        zoo = models.get_entry(name).zoo
        rows.append((name, f"{f.params:,}", f"{f.binary_mac_fraction:.1%}",
                     f"{f.size_bytes / 2**20:.2f} MiB", f"{f.compression_ratio:.1f}x",
                     zoo.summary if zoo else "-"))
    if not rows:  # one model, or all of them: say what size works
        raise input_too_small_error(*too_small[0], shape, num_classes)
    click.echo(f"Models at {'x'.join(map(str, shape))}, {num_classes} classes:")
    _echo_table(rows, ("model", "params", "binary MACs", "size (1-bit)", "vs float32",
                       "vs larq-zoo"))
    if any(row[-1] != "-" for row in rows) and names != [pattern]:
        click.echo("vs larq-zoo: how the default differs from larq-zoo 2.4.0 (binary convs "
                   "padded with +1 so LCE needs no padding correction; 'small-input stem': "
                   "a 3x3 stem under 50 px where the zoo keeps its ImageNet stem; 'weight "
                   "scale per channel': DoReFa-Net's binary weights scaled per output channel "
                   "where the zoo uses one scale per layer; '-': no larq-zoo variant "
                   "registered). --model-option variant=larq-zoo builds the zoo's function, "
                   "and a larq-zoo weights .h5 given to models.create_model(..., weights=FILE) "
                   "or to bnn train --weights selects it.")
    if too_small:
        click.echo(f"Warning: --input-shape {input_shape} is too small for "
                   f"{', '.join(name for name, _ in too_small)}; `bnn summary MODEL "
                   f"--input-shape {input_shape}` names the smallest that works.", err=True)
    if names == [pattern]:
        for line in _model_card(pattern):
            click.echo(line)


def _model_card(name: str) -> List[str]:
    """What `bnn models NAME` adds for one model: its options with their defaults, its paper
    recipe (each stage of a staged one) and how it differs from larq-zoo, at 80 columns."""
    import textwrap

    import models
    from bnn_keras.training import recipes
    from models.registry import model_options, none_default_meanings, shown_default

    entry = models.get_entry(name)
    lines = ["", f"{name} options (--model-option KEY=VALUE, with their defaults):"]
    meanings = none_default_meanings(name)
    for key, value in model_options(name).items():
        # A None default stands for the builder's own choice: say which, as it documents it.
        meaning = f": {meanings[key]}" if key in meanings else ""
        lines += textwrap.wrap(f"{key} = {shown_default(value)}{meaning}", width=80,
                               initial_indent="  ", subsequent_indent="      ")
    if not model_options(name):
        lines.append("  (none)")
    lines.append("paper recipe (--recipe paper):")
    if entry.staged is not None:
        stages = [(f"stage {stage.name}", stage.recipe) for stage in entry.staged.stages]
    elif entry.recipe is not None:
        stages = [("", entry.recipe)]
    else:
        stages = []
    for label, paper in stages:
        described = recipes.Recipe.from_paper(paper).describe()
        lines += textwrap.wrap(f"{label}: {described}" if label else described, width=80,
                               initial_indent="  ", subsequent_indent="    ")
    if not stages:
        lines.append("  none published; `bnn train` uses bnn's default recipe")
    if entry.zoo is not None:
        lines.append(f"vs larq-zoo ({entry.zoo.source}):")
        for difference in entry.zoo.differences:
            lines += textwrap.wrap(difference, width=80, initial_indent="  - ",
                                   subsequent_indent="    ")
    return lines


@main.command()
@click.argument("name", metavar="MODEL")
@click.option("--input-shape", default="224,224,3", show_default=True, help="Input H,W,C.")
@click.option("--num-classes", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Classes.")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="For a registry MODEL: an option of its builder (repeatable; as `bnn train "
                   "--model-option`; `bnn models MODEL` lists them).")
@click.option("--convert", "convert_model", is_flag=True,
              help="Also convert the model with LCE (arm64, in memory) and print the "
                   "flatbuffer's exact size and LceBconv2d count next to the predictions "
                   "(seconds for small models, minutes at ImageNet size).")
@custom_objects_option
@trust_model_code_option
def summary(name: str, input_shape: str, num_classes: int, model_options: Sequence[str] = (),
            convert_model: bool = False, custom_objects: Sequence[str] = (),
            trust_model_code: bool = False) -> None:
    """Per-layer table of MODEL (a registry name, run folder or model file): quantizers, output
    shape, parameters by precision, MACs, and every layer LCE will not binarize, with the
    reason. The flatbuffer's size is predicted from the weights; --convert measures it."""
    from bnn_keras import model_stats

    _use_custom_objects(custom_objects)
    _use_trust_model_code(trust_model_code)
    model = _model_from(name, input_shape, num_classes, _parse_model_options(model_options))
    stats = model_stats.model_summary(model)
    click.echo(model_stats.format_table(stats))
    if convert_model:
        from convert.converter import convert_to_flatbuffer, float32_for_conversion

        flatbuffer = convert_to_flatbuffer(float32_for_conversion(model), target="arm64")
        size, bconvs = len(flatbuffer), flatbuffer.ops.get("LceBconv2d", 0)
        low, high = model_stats.predicted_size_range(stats)
        where = ("inside the predicted range" if low <= size <= high else
                 f"{'below' if size < low else 'above'} the predicted range")
        click.echo(f"Converted (LCE, arm64): {size:,} bytes ({model_stats.format_bytes(size)}, "
                   f"{where}), {bconvs} LceBconv2d ops (expected {stats.lce_bconvs})")


# ----------------------------------------------------------------------------------------------
# inspect, check-bundle
# ----------------------------------------------------------------------------------------------


def _parse_shape(text: str):
    try:
        shape = tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise BnnError(f"Expected --input-shape as H,W,C (e.g. 32,32,3), got {text!r}.")
    return shape


def _note_rebuilt(source: str, rebuilt_classes: Sequence[str]) -> None:
    """Says on stderr that a model file's own class was not used: its subclass, which cannot
    be imported here, was loaded as its functional graph (`LoadedModel.rebuilt_classes`)."""
    if rebuilt_classes:
        click.echo(f"Note: {source}'s {', '.join(rebuilt_classes)} (a tf.keras.Model "
                   "subclass that cannot be imported here) was loaded as its functional "
                   "graph, with the file's weights.", err=True)


def _model_from(source: str, input_shape: str, num_classes: int,
                overrides: Optional[Dict[str, Any]] = None):
    """A Keras model from a run folder, a model file, or a registry name (built with
    `overrides`, its builder's options)."""
    import models
    from convert.loading import load_trained_model
    from models.input_size import input_too_small_error, is_input_too_small

    if Path(source).exists():
        if overrides:
            raise BnnError("`model_options` are options of a registry model's builder; "
                           f"{source} is a model file or run folder, built already.")
        loaded = load_trained_model(source)
        _note_rebuilt(source, loaded.rebuilt_classes)
        return loaded.model
    if source in models.list_models() or not source.endswith((".keras", ".h5")):
        shape = _parse_shape(input_shape)
        try:
            return models.create_model(source, input_shape=shape, num_classes=num_classes,
                                       **(overrides or {}))
        except ValueError as exc:
            if not is_input_too_small(exc):
                raise
            raise input_too_small_error(source, exc, shape, num_classes) from None
    return load_trained_model(source).model  # raises the missing-file error


@main.command("inspect")
@click.argument("source", metavar="MODEL")
@click.option("--target", type=click.Choice(["arm64", "arm", "xcore"]), default="arm64",
              show_default=True, help="The LCE target the checks apply to.")
@click.option("--input-shape", default="224,224,3", show_default=True,
              help="Input H,W,C when MODEL is a registry name.")
@click.option("--num-classes", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Classes when MODEL is a registry name.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@custom_objects_option
@trust_model_code_option
def inspect_command(source: str, target: str, input_shape: str, num_classes: int,
                    as_json: bool, custom_objects: Sequence[str] = (),
                    trust_model_code: bool = False) -> None:
    """Check MODEL (run folder, model file or registry name) for what stops LCE from
    producing fast binary ops, before converting it. Exits 1 when an error is found.

    A converted FILE.tflite is described instead: its size, operators (LceBconv2d first),
    inputs and outputs, float ops LCE left between binary convolutions, and the bnn metadata
    it carries (model, data set, classes, normalization).
    """
    import dataclasses

    from convert.lint import errors, format_findings, inspect_model

    from convert.describe import is_flatbuffer

    if source.endswith(".tflite") or (Path(source).is_file() and is_flatbuffer(source)):
        _inspect_flatbuffer(source, as_json)
        return
    _use_custom_objects(custom_objects)
    _use_trust_model_code(trust_model_code)
    model = _model_from(source, input_shape, num_classes)
    findings = inspect_model(model, target=target)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(f) for f in findings], indent=2))
    else:
        click.echo(format_findings(findings) if findings else f"{model.name}: no findings; "
                   "every binary layer maps to fast LCE ops.")
    if errors(findings):
        sys.exit(1)


def _inspect_flatbuffer(path: str, as_json: bool) -> None:
    """`bnn inspect FILE.tflite`: what the file holds, from the flatbuffer alone."""
    from convert.describe import describe_flatbuffer, format_description

    info = describe_flatbuffer(path)
    click.echo(json.dumps(info, indent=2) if as_json else "\n".join(format_description(info)))


@main.command("check-bundle")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
def check_bundle_command(bundle_dir: str) -> None:
    """Check a Raspberry Pi bundle: every file bnn wrote against its manifest.json (the runner's
    arguments, scripts, labels, model.json, model, test tensors, runner sources), then the
    self-check (test input -> expected output) in LCE's interpreter, as the bundle's C++ runner
    does on the device.

    Files bnn did not write (your notes) are listed, not checked; what build.sh and
    benchmark.sh make on the device (build/, ...) is expected. A bundle from before manifests is
    checked as far as model.json and the scripts bnn wrote allow. Any file missing or different
    is named in one error line, with exit code 2.
    """
    from convert.bundle_check import check_bundle
    from convert.bundle_layout import MANIFEST_FILE

    result = check_bundle(bundle_dir)
    verdict = "OK" if result.ok else "MISMATCH"
    click.echo(f"{bundle_dir}: {verdict}: max |diff| {result.max_abs_diff:.3g} (tolerance "
               f"{result.atol:.3g}), top-1 {result.label(result.actual_top1)} (expected "
               f"{result.label(result.expected_top1)})")
    if result.manifest:
        click.echo(f"{bundle_dir}: {len(result.files_checked)} files as bnn wrote them "
                   f"({MANIFEST_FILE}, bundle sha256 {result.bundle_sha256})")
    else:
        click.echo(f"{bundle_dir}: no {MANIFEST_FILE} (written by an earlier bnn): "
                   f"{len(result.files_checked)} files checked against model.json and the "
                   "versions bnn wrote; not checkable without it: "
                   f"{', '.join(result.files_unchecked)}; "
                   f"`bnn convert RUN --bundle {bundle_dir} --overwrite` writes one")
    if result.user_files:
        click.echo(f"{bundle_dir}: not bnn's, not checked: {', '.join(result.user_files)}")
    if not result.ok:
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
