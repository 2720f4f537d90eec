"""The `bnn` command: train a BNN, convert it for ARM with Larq Compute Engine, run it.

Every command parses options, calls the `bnn_keras`, `models` and `convert` packages, and
prints. A `BnnError` (bad input the user can fix) becomes one line on stderr and exit code 2;
any other failure becomes one line and exit code 1. `bnn --debug ...` shows the traceback.
"""

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import click

import bnn_keras  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

# The import above has run, so TensorFlow resolves to tf-keras from here on.
from bnn_keras import BnnError  # noqa: E402

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


class BnnGroup(click.Group):
    """A click group that turns exceptions into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # the one place that decides how failures look
            if ctx.params.get("debug"):
                raise
            if isinstance(exc, BnnError):
                click.echo(f"Error: {exc}", err=True)
                ctx.exit(getattr(exc, "exit_code", EXIT_USER_ERROR))
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(
                f"Internal error: {type(exc).__name__}: {message} (rerun with --debug for the traceback)",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL_ERROR)


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
    """One-line warnings of ours; TensorFlow's Python logger only for errors."""
    import logging
    import warnings

    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)

    def show(message, category, filename, lineno, file=None, line=None):
        click.echo(f"Warning: {message}", err=True)

    warnings.showwarning = show


def _echo_table(rows, headers) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in (headers, *rows):
        click.echo("  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                             for i, (v, w) in enumerate(zip(row, widths))).rstrip())


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------


@main.command()
@click.argument("model_name", metavar="MODEL", required=False)
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False),
              default=None,
              help="Continue an interrupted run folder from its last complete epoch "
                   "(MODEL and the other options come from its config.json).")
@click.option("--dataset", default="cifar10", show_default=True,
              help="digits (bundled with scikit-learn, offline), mnist, fashion_mnist (IDX files "
                   "in --data-dir are read directly), cifar10, cifar100, imagenette, "
                   "imagenet2012 (TFDS), or folder:PATH (one sub-folder of images per class).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the data set lives or is downloaded to (TFDS data_dir, or a folder of "
                   "IDX files such as /usr/share/datasets/fashion-mnist).")
@click.option("--manual-dir", type=click.Path(file_okay=False), default=None,
              help="Where manually downloaded archives are (imagenet2012).")
@click.option("--epochs", type=int, default=None,
              help="Training epochs [default: the recipe's, else 10].")
@click.option("--batch-size", type=int, default=None,
              help="Global batch size, split over workers [default: the recipe's, else 64].")
@click.option("--learning-rate", "--lr", type=float, default=None,
              help="Peak Adam learning rate [default: the recipe's, 1e-3 by default]. BNNs want "
                   "a low one: a high rate flips many latent weight signs per step.")
@click.option("--recipe", type=click.Choice(["default", "paper"]), default="default",
              show_default=True,
              help="paper: the optimizer, schedule, epochs and batch size of the model's paper "
                   "(the options here override single values).")
@click.option("--float-learning-rate", "--float-lr", type=float, default=None,
              help="Peak SGD learning rate of the float weights with --optimizer adam-sgd "
                   "[default: the recipe's, 0.1].")
@click.option("--optimizer", type=click.Choice(["adam", "bop", "adam-sgd"]), default=None,
              help="adam; bop (larq's Bop for binary weights, Adam for the rest); or adam-sgd "
                   "(Adam for binary weights, SGD with momentum for the rest, QuickNet's "
                   "recipe).")
@click.option("--schedule", type=click.Choice(["constant", "step", "linear", "cosine"]),
              default=None, help="Learning-rate decay [default: the recipe's, constant].")
@click.option("--warmup-epochs", type=float, default=None, help="Linear learning-rate warm-up.")
@click.option("--label-smoothing", type=float, default=None, help="Label smoothing, e.g. 0.1.")
@click.option("--weight-decay", type=float, default=None,
              help="L2 on full-precision kernels only (binary latent weights never decay).")
@click.option("--strategy", type=click.Choice(["auto", "default", "mirrored", "multi-worker"]),
              default="auto", show_default=True,
              help="tf.distribute strategy; multi-worker reads TF_CONFIG (one process per "
                   "worker, --batch-size is global).")
@click.option("--input-quantizer", type=click.Choice(["ste_sign", "approx_sign", "sign_swish"]),
              default=None, help="Activation binarizer of every binary layer (trick).")
@click.option("--kernel-quantizer", type=click.Choice(["ste_sign", "approx_sign", "sign_swish"]),
              default=None, help="Weight binarizer of every binary layer (trick).")
@click.option("--regularizer", type=click.Choice(["bipolar", "bipolar-smooth", "bnn+-l1",
                                                   "bnn+-l2"]), default=None,
              help="bipolar: push latent weights to +/-1 (Tang et al.); bnn+-l1/l2: trainable "
                   "per-channel scale with the BNN+ regularizer.")
@click.option("--regularization-factor", type=float, default=1e-5, show_default=True,
              help="Strength of --regularizer.")
@click.option("--bases", type=int, default=1, show_default=True,
              help="Binary bases per activation (residual binarization): K binary convs summed.")
@click.option("--activation", type=click.Choice(["relu", "prelu"]), default=None,
              help="prelu: replace the model's ReLUs with PReLU (trick).")
@click.option("--scale-output", is_flag=True,
              help="Add a learnable scale before the softmax (trick for a binarized last layer).")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="Override an option of the model's builder (repeatable; VALUE is JSON, "
                   "else a string), e.g. --model-option stage_filters=[16,32,64,128].")
@click.option("--image-size", type=int, default=None,
              help="Side of the square model input [default: the data set's, 16 for digits].")
@click.option("--steps-per-epoch", type=int, default=None,
              help="Limit each epoch to this many batches (quick experiments).")
@click.option("--validation-freq", type=click.IntRange(min=1), default=1, show_default=True,
              help="Evaluate on the test split every N epochs (and after the last one).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for weights, shuffling and augmentation.")
@click.option("--precision", type=click.Choice(["auto", "mixed_bfloat16", "float32"]),
              default="auto", show_default=True,
              help="Keras dtype policy; auto = mixed_bfloat16 where the CPU (AVX512-BF16/AMX) or "
                   "GPU runs bf16 natively, else float32 (emulated bf16 is ~7x slower).")
@click.option("--augment/--no-augment", default=None,
              help="Standard augmentation of the data set [default: on for CIFAR, off for digits].")
@click.option("--track-flips/--no-track-flips", default=True, show_default=True,
              help="Record the fraction of latent weights whose sign flips, per binary layer and "
                   "epoch, into history.csv, flips.csv and flips.png.")
@click.option("--flip-every-n-steps", type=int, default=None,
              help="Also record sign flips every N training steps.")
@click.option("--flip-warn-threshold", type=float, default=0.05, show_default=True,
              help="Warn when the flip ratio stays above this late in training (a learning rate "
                   "that is too high); 0 disables the warning.")
@click.option("--tensorboard", is_flag=True, help="Write TensorBoard logs to RUN_DIR/tensorboard.")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Run folder to create [default: runs/MODEL-DATASET].")
@click.option("--verbose", type=click.IntRange(0, 2), default=1, show_default=True,
              help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")
def train(model_name: Optional[str], resume_dir: Optional[str], dataset: str,
          data_dir: Optional[str], manual_dir: Optional[str], epochs: Optional[int], batch_size: Optional[int],
          learning_rate: Optional[float], float_learning_rate: Optional[float], recipe: str,
          optimizer: Optional[str],
          schedule: Optional[str], warmup_epochs: Optional[float],
          label_smoothing: Optional[float], weight_decay: Optional[float], strategy: str,
          input_quantizer: Optional[str], kernel_quantizer: Optional[str],
          regularizer: Optional[str], regularization_factor: float, bases: int,
          activation: Optional[str], scale_output: bool, model_options: Tuple[str, ...],
          image_size: Optional[int], steps_per_epoch: Optional[int], validation_freq: int,
          seed: int, precision: str,
          augment: Optional[bool], track_flips: bool, flip_every_n_steps: Optional[int],
          flip_warn_threshold: float, tensorboard: bool, output: Optional[str],
          verbose: int) -> None:
    """Train MODEL (a name from `bnn models`) and write a run folder.

    The run folder holds model.keras, config.json (every option), history.csv, flips.csv and
    flips.png (sign flips per binary layer), status.json, backup/ (the last complete epoch,
    for --resume) and metrics.json (final accuracy, wall time, images/s). Ctrl-C keeps the
    last complete epoch: continue with `bnn train --resume RUN_DIR`.
    """
    import models
    from bnn_keras import training

    if resume_dir:
        run_config = training.read_run_config(Path(resume_dir))
        config = training.TrainConfig.from_run_config(run_config)
        click.echo(f"Resuming {resume_dir}: {config.model} on {config.dataset}, "
                   f"{training.read_status(Path(resume_dir)).get('epochs_completed', 0)} of "
                   f"{config.epochs} epochs done")
        build = functools.partial(_build_registered, config.model, config.tricks,
                                  config.model_options)
        result = training.resume_training(Path(resume_dir), build, verbose=verbose)
    else:
        if not model_name:
            raise click.UsageError("Missing MODEL (or --resume RUN_DIR).")
        models.get_model_fn(model_name)  # fail fast on a bad name, before loading any data
        tricks = {key: value for key, value in dict(
            input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
            regularizer=regularizer, bases=bases if bases != 1 else None,
            activation=activation, scale_output=scale_output or None,
        ).items() if value is not None}
        if regularizer:
            tricks["regularization_factor"] = regularization_factor
        overrides = _parse_model_options(model_options)
        config = training.TrainConfig(
            model=model_name, dataset=dataset, data_dir=data_dir, manual_dir=manual_dir,
            image_size=image_size,
            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
            float_learning_rate=float_learning_rate, recipe=recipe,
            optimizer=optimizer, schedule=schedule, warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing, weight_decay=weight_decay, strategy=strategy,
            tricks=tricks, model_options=overrides, steps_per_epoch=steps_per_epoch,
            validation_freq=validation_freq, seed=seed, precision=precision,
            augment=augment, track_flips=track_flips, flip_every_n_steps=flip_every_n_steps,
            flip_warn_threshold=flip_warn_threshold or None, tensorboard=tensorboard,
        )
        training.resolve_recipe(config)  # bad options fail here, before any data is loaded
        run_dir = Path(output or f"runs/{model_name}-{dataset}")
        build = functools.partial(_build_registered, model_name, tricks, overrides)
        result = training.train(config, build, run_dir, verbose=verbose)
    m = result.metrics
    click.echo(f"Run folder: {result.run_dir}")
    click.echo(
        f"train accuracy {m['train_accuracy']:.4f}  test accuracy {m['test_accuracy']:.4f}  "
        f"{m['wall_time_s']:.1f} s  {m['images_per_s'] or 0:.1f} images/s"
    )


def _build_registered(name: str, tricks: Dict[str, Any], model_options: Dict[str, Any],
                      input_shape, num_classes):
    import models

    return models.create_model(name, input_shape=input_shape, num_classes=num_classes,
                               tricks=tricks, **model_options)


def _parse_model_options(pairs: Sequence[str]) -> Dict[str, Any]:
    """`("stage_filters=[16,32]", "growth_rate=32")` -> keyword arguments (JSON values)."""
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}",
                                     param_hint="--model-option")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        options[key.strip().replace("-", "_")] = value
    return options


# ----------------------------------------------------------------------------------------------
# convert
# ----------------------------------------------------------------------------------------------


@main.command()
@click.argument("source", metavar="RUN_DIR_OR_MODEL_FILE", type=click.Path())
@click.option("--target", type=click.Choice(["arm64", "arm", "xcore"]), default="arm64",
              show_default=True, help="LCE target; arm64 and arm both mean LCE's ARM kernels.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Where to write the .tflite [default: model.tflite next to the model].")
@click.option("--samples", type=int, default=64, show_default=True,
              help="Inputs to compare Keras and the .tflite on (the run's test images).")
@click.option("--inputs", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A .npy of preprocessed inputs to verify on when the model has no run folder.")
@click.option("--min-agreement", type=float, default=0.99, show_default=True,
              help="Fail (keeping the file as .unverified) below this Keras/.tflite top-1 agreement.")
@click.option("--int8", is_flag=True,
              help="Run the non-binary layers in int8 (fake-quant ranges calibrated on the run's "
                   "training images); the report compares size and accuracy with float32.")
@click.option("--int8-io", is_flag=True, help="int8 model input and output (needs --int8).")
@click.option("--calibration-samples", type=int, default=256, show_default=True,
              help="Training images that calibrate the --int8 ranges.")
@click.option("--fine-tune-epochs", type=int, default=0, show_default=True,
              help="Quantization-aware fine-tuning epochs for --int8 on those images.")
@click.option("--bundle", "bundle_dir", type=click.Path(file_okay=False), default=None,
              help="Also write a Raspberry Pi deployment folder (model, labels, test I/O, runner).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def convert(source: str, target: str, output: Optional[str], samples: int,
            inputs: Optional[str], min_agreement: float, int8: bool, int8_io: bool,
            calibration_samples: int, fine_tune_epochs: int, bundle_dir: Optional[str],
            as_json: bool) -> None:
    """Convert a trained model to an LCE flatbuffer, verify it, and report on it.

    The flatbuffer is run in LCE's interpreter on real inputs and compared with Keras. The
    report gives the size, the op counts, LceBconv2d vs binary layers, the binarized-MAC
    fraction and any float op left between two binary convolutions (a missed fusion).
    """
    from convert.workflow import VerificationFailedError, convert_trained_model

    if not as_json:
        click.echo(f"Converting {source} for target {target} ...")
    try:
        report = convert_trained_model(
            source, output=output, target=target, samples=samples, inputs=inputs,
            min_agreement=min_agreement, int8=int8, int8_io=int8_io,
            calibration_samples=calibration_samples, fine_tune_epochs=fine_tune_epochs,
            bundle=bundle_dir, verbose=0 if as_json else 1,
        )
    except VerificationFailedError as exc:
        _print_report(exc.report, as_json)
        raise
    _print_report(report, as_json)


def _print_report(report, as_json: bool) -> None:

    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())


# ----------------------------------------------------------------------------------------------
# benchmark
# ----------------------------------------------------------------------------------------------


@main.command()
@click.argument("tflite_file", type=click.Path())
@click.option("--threads", type=int, default=1, show_default=True, help="Interpreter threads.")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed inferences.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed inferences first.")
@click.option("--compare-float", "float_model", type=click.Path(), default=None,
              help="A float TFLite copy (or the Keras run/model to make one from) to time too.")
def benchmark(tflite_file: str, threads: int, runs: int, warmup: int,
              float_model: Optional[str]) -> None:
    """Single-image latency of a .tflite in LCE's interpreter (min, median, p90).

    The model runs in a separate process, so a damaged file cannot crash this one. On x86 LCE
    uses portable kernels: the numbers are a regression check. On a Raspberry Pi use LCE's
    lce_benchmark_model binary (see `bnn convert --bundle`) for the real latency.
    """
    from convert.isolated import isolated_benchmark
    from convert.runtime import read_flatbuffer

    flatbuffer = read_flatbuffer(tflite_file)
    click.echo(f"Timing {tflite_file}: {warmup} warm-up + {runs} runs, {threads} thread(s) ...")
    rows = [("binary (LCE)", isolated_benchmark(flatbuffer, threads, runs, warmup))]
    if float_model:
        from convert.float_reference import float_flatbuffer

        rows.append(("float", isolated_benchmark(float_flatbuffer(float_model), threads, runs,
                                                 warmup)))
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
@click.option("--threads", type=int, default=1, show_default=True, help="Interpreter threads.")
def evaluate(tflite_file: str, dataset: Optional[str], data_dir: Optional[str],
             limit: Optional[int], threads: int) -> None:
    """Top-1 accuracy of a .tflite on a data set's test split, in LCE's interpreter.

    Images are preprocessed as in training (size and normalization are stored in the .tflite
    by `bnn convert`).
    """
    from convert.evaluate import evaluate_flatbuffer
    from convert.runtime import read_flatbuffer
    from convert.samples import flatbuffer_test_split

    flatbuffer = read_flatbuffer(tflite_file)
    x, y, name = flatbuffer_test_split(flatbuffer, dataset=dataset, data_dir=data_dir, limit=limit)
    click.echo(f"Evaluating {tflite_file} on {len(x)} {name} test images ...")
    result = evaluate_flatbuffer(flatbuffer, x, y, threads=threads)
    click.echo(f"{tflite_file}: test accuracy {result['accuracy']:.4f} on {result['n']} {name} images")


# ----------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------


@main.command()
@click.argument("tflite_file", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--top-k", type=int, default=3, show_default=True, help="Classes to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
def predict(tflite_file: str, images, top_k: int, as_json: bool) -> None:
    """Top-k labels for image files (PNG, JPEG, BMP, GIF), preprocessed as in training."""

    from convert.evaluate import image_options, predict_images
    from convert.metadata import read_metadata
    from convert.runtime import read_flatbuffer

    flatbuffer = read_flatbuffer(tflite_file)
    meta = read_metadata(flatbuffer)
    if not meta:
        raise BnnError(f"{tflite_file} carries no training preprocessing (bnn metadata); "
                       "convert it from a run folder with `bnn convert RUN_DIR`.")
    predictions = predict_images(flatbuffer, list(images), top_k=top_k, **image_options(meta))
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
@click.option("--num-classes", type=int, default=1000, show_default=True, help="Classes.")
def models_command(pattern: Optional[str], input_shape: str, num_classes: int) -> None:
    """List registered models (optionally matching a shell PATTERN such as '*densenet*') with
    their parameter count, binarized-MAC fraction and size with 1-bit binary weights."""
    import models
    import tensorflow as tf
    from tqdm import tqdm

    names = models.list_models(pattern)
    if not names:
        raise BnnError(f"No model matches {pattern!r}; `bnn models` lists them all.")
    shape = _parse_shape(input_shape)
    rows = []
    for name in tqdm(names, desc="building", unit="model", file=sys.stderr, leave=False):
        stats = models.describe(name, input_shape=shape, num_classes=num_classes)
        rows.append((name, f"{stats.total_params:,}", f"{stats.binary_mac_fraction:.1%}",
                     f"{stats.size_bytes / 2**20:.2f} MiB", f"{stats.compression_ratio:.1f}x"))
        tf.keras.backend.clear_session()  # 14 ImageNet-size graphs would pile up in memory
    click.echo(f"Models at {'x'.join(map(str, shape))}, {num_classes} classes:")
    _echo_table(rows, ("model", "params", "binary MACs", "size (1-bit)", "vs float32"))


@main.command()
@click.argument("name", metavar="MODEL")
@click.option("--input-shape", default="224,224,3", show_default=True, help="Input H,W,C.")
@click.option("--num-classes", type=int, default=1000, show_default=True, help="Classes.")
def summary(name: str, input_shape: str, num_classes: int) -> None:
    """Per-layer table of MODEL (a registry name, run folder or model file): output shape,
    parameters by precision, MACs, and every layer LCE will not binarize, with the reason."""
    from bnn_keras import model_stats

    model = _model_from(name, input_shape, num_classes)
    click.echo(model_stats.format_table(model_stats.model_summary(model)))


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


def _model_from(source: str, input_shape: str, num_classes: int):
    """A Keras model from a run folder, a model file, or a registry name."""
    import models
    from convert.loading import load_trained_model

    if Path(source).exists():
        return load_trained_model(source).model
    if source in models.list_models() or not source.endswith((".keras", ".h5")):
        return models.create_model(source, input_shape=_parse_shape(input_shape),
                                   num_classes=num_classes)
    return load_trained_model(source).model  # raises the missing-file error


@main.command("inspect")
@click.argument("source", metavar="MODEL")
@click.option("--target", type=click.Choice(["arm64", "arm", "xcore"]), default="arm64",
              show_default=True, help="The LCE target the checks apply to.")
@click.option("--input-shape", default="224,224,3", show_default=True,
              help="Input H,W,C when MODEL is a registry name.")
@click.option("--num-classes", type=int, default=1000, show_default=True,
              help="Classes when MODEL is a registry name.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def inspect_command(source: str, target: str, input_shape: str, num_classes: int,
                    as_json: bool) -> None:
    """Check MODEL (run folder, model file or registry name) for what stops LCE from
    producing fast binary ops, before converting it. Exits 1 when an error is found."""
    import dataclasses

    from convert.inspect import errors, format_findings, inspect_model

    model = _model_from(source, input_shape, num_classes)
    findings = inspect_model(model, target=target)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(f) for f in findings], indent=2))
    else:
        click.echo(format_findings(findings) if findings else f"{model.name}: no findings; "
                   "every binary layer maps to fast LCE ops.")
    if errors(findings):
        sys.exit(1)


@main.command("check-bundle")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
def check_bundle_command(bundle_dir: str) -> None:
    """Run a Raspberry Pi bundle's self-check (test input -> expected output) in LCE's
    interpreter, as the bundle's C++ runner does on the device."""
    from convert.bundle import check_bundle

    result = check_bundle(bundle_dir)
    verdict = "OK" if result.ok else "MISMATCH"
    click.echo(f"{bundle_dir}: {verdict}: max |diff| {result.max_abs_diff:.3g} (tolerance "
               f"{result.atol:.3g}), top-1 {result.actual_top1} (expected {result.expected_top1})")
    if not result.ok:
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
