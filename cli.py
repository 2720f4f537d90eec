"""The `bnn` command: train a BNN, convert it for ARM with Larq Compute Engine, run it.

Every command parses options, calls the `bnn_keras`, `models` and `convert` packages, and
prints. A `BnnError` (bad input the user can fix) becomes one line on stderr and exit code 2;
any other failure becomes one line and exit code 1. `bnn --debug ...` shows the traceback.
"""

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional

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
                ctx.exit(EXIT_USER_ERROR)
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
@click.argument("model_name", metavar="MODEL")
@click.option("--dataset", default="cifar10", show_default=True,
              help="Data set: digits (bundled with scikit-learn, offline) or cifar10 (TFDS).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the data set lives or is downloaded to (TFDS data_dir).")
@click.option("--epochs", type=int, default=10, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Global batch size.")
@click.option("--learning-rate", "--lr", type=float, default=1e-3, show_default=True,
              help="Adam learning rate (BNNs want a low one: a high rate flips many signs).")
@click.option("--image-size", type=int, default=None,
              help="Side of the square model input [default: the data set's, 16 for digits].")
@click.option("--steps-per-epoch", type=int, default=None,
              help="Limit each epoch to this many batches (quick experiments).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for weights, shuffling and augmentation.")
@click.option("--precision", type=click.Choice(["auto", "mixed_bfloat16", "float32"]),
              default="auto", show_default=True,
              help="Keras dtype policy; auto = mixed_bfloat16 where the CPU/GPU supports bf16.")
@click.option("--augment/--no-augment", default=None,
              help="Standard augmentation of the data set [default: on for CIFAR, off for digits].")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Run folder to create [default: runs/MODEL-DATASET].")
@click.option("--verbose", type=click.IntRange(0, 2), default=1, show_default=True,
              help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")
def train(model_name: str, dataset: str, data_dir: Optional[str], epochs: int, batch_size: int,
          learning_rate: float, image_size: Optional[int], steps_per_epoch: Optional[int],
          seed: int, precision: str, augment: Optional[bool], output: Optional[str],
          verbose: int) -> None:
    """Train MODEL (a name from `bnn models`) and write a run folder.

    The run folder holds model.keras, config.json (every option), history.csv and
    metrics.json (final accuracy, wall time, images/s).
    """
    import models
    from bnn_keras import training

    models.get_model_fn(model_name)  # fail fast on a bad name, before loading any data
    config = training.TrainConfig(
        model=model_name, dataset=dataset, data_dir=data_dir, image_size=image_size,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        steps_per_epoch=steps_per_epoch, seed=seed, precision=precision, augment=augment,
    )
    config.validate()
    run_dir = Path(output or f"runs/{model_name}-{dataset}")
    build = functools.partial(_build_registered, model_name, config.model_options)
    result = training.train(config, build, run_dir, verbose=verbose)
    m = result.metrics
    click.echo(f"Run folder: {result.run_dir}")
    click.echo(
        f"train accuracy {m['train_accuracy']:.4f}  test accuracy {m['test_accuracy']:.4f}  "
        f"{m['wall_time_s']:.1f} s  {m['images_per_s']:.1f} images/s"
    )


def _build_registered(name: str, options: Dict[str, Any], input_shape, num_classes):
    import models

    return models.create_model(name, input_shape=input_shape, num_classes=num_classes, **options)


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
              help="Test images from the run's data set to compare Keras and the .tflite on.")
def convert(source: str, target: str, output: Optional[str], samples: int) -> None:
    """Convert a trained model to an LCE flatbuffer and report on it.

    Prints the file size, the count of each op in the flatbuffer, and how far the
    flatbuffer (run in LCE's interpreter) is from Keras on real inputs.
    """
    from bnn_keras import files
    from convert.samples import verification_inputs
    from convert.converter import convert_model
    from convert.flatbuffer import op_histogram
    from convert.loading import load_trained_model
    from convert.metadata import embed_metadata, run_metadata
    from convert.verify import verify_flatbuffer

    loaded = load_trained_model(source)
    out_path = Path(output) if output else loaded.path.parent / "model.tflite"
    click.echo(f"Converting {loaded.path} for target {target} ...")
    flatbuffer = embed_metadata(
        convert_model(loaded.model, target=target), run_metadata(loaded.run_config)
    )
    x, where = verification_inputs(loaded.model, loaded.run_config, samples)
    verification = verify_flatbuffer(loaded.model, flatbuffer, x, verbose=1)
    files.write_bytes(out_path, flatbuffer)

    click.echo(f"Wrote {out_path} ({len(flatbuffer):,} bytes)")
    ops = op_histogram(flatbuffer)
    click.echo("Ops: " + ", ".join(f"{name} {count}" for name, count in ops.most_common()))
    click.echo(
        f"Keras vs .tflite on {verification.samples} {where}: "
        f"max |diff| {verification.max_abs_diff:.3g}, top-1 agreement {verification.top1_agreement:.2%}"
    )


# ----------------------------------------------------------------------------------------------
# benchmark
# ----------------------------------------------------------------------------------------------


@main.command()
@click.argument("tflite_file", type=click.Path())
@click.option("--threads", type=int, default=1, show_default=True, help="Interpreter threads.")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed inferences.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed inferences first.")
def benchmark(tflite_file: str, threads: int, runs: int, warmup: int) -> None:
    """Single-image latency of a .tflite in LCE's interpreter (median and p90).

    On x86 LCE uses portable kernels: the numbers are a regression check. On a Raspberry Pi use
    LCE's lce_benchmark_model binary for the real latency.
    """
    from tqdm import tqdm

    from convert.runtime import benchmark as run_benchmark
    from convert.runtime import read_flatbuffer

    flatbuffer = read_flatbuffer(tflite_file)
    latency = run_benchmark(
        flatbuffer, threads=threads, runs=runs, warmup=warmup,
        progress=functools.partial(tqdm, desc="benchmark", unit="run", file=sys.stderr),
    )
    click.echo(
        f"{tflite_file}: {latency.runs} runs, {latency.threads} thread(s): "
        f"median {latency.median_ms:.2f} ms, p90 {latency.p90_ms:.2f} ms, min {latency.min_ms:.2f} ms"
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
    click.echo(f"Evaluating {tflite_file} on {len(x)} {name} test images ...", err=True)
    result = evaluate_flatbuffer(flatbuffer, x, y, threads=threads)
    click.echo(f"{tflite_file}: test accuracy {result['accuracy']:.4f} on {result['n']} {name} images")


if __name__ == "__main__":
    main()
