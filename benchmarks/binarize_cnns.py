"""`bnn binarize` on float CNNs bnn did not design: Fashion-MNIST accuracy, size and time.

For each float CNN of `float_cnns.py` (Keras' "Simple MNIST convnet", the VGG-style stack of
Keras' `cifar10_cnn.py`, ResNet-20 of `cifar10_resnet.py`), in `OUTPUT/CNN/`:

1. `float.keras`: the float CNN trained on Fashion-MNIST's 60,000 training images as a user
   would train it, with plain Keras `fit` (Adam at 1e-3 with a cosine decay to 0, batch 128,
   pixels / 255, no augmentation), saved in float32. Its test accuracy and the size of its
   float .tflite (LCE's converter, arm64) are the baseline.
2. `bnn-teacher/`: `bnn binarize float.keras` (`stages.train_staged` of the config the command
   builds): ReActNet's two steps (binary activations with real weights, then binary weights),
   each learning the float model's softmax (ReActNet's distribution loss).
3. `bnn-labels/`: the same two steps of the same binarized model with the same recipe, learning
   the labels only (cross-entropy, no teacher): what the teacher adds.

Each BNN is then converted (`convert_trained_model`: LCE, arm64, verified against Keras on
test images), and the table gives its test accuracy (float32 Keras model, as deployed), the
binarized-MAC fraction, LceBconv2d against binary convs, the .tflite size against the float
one's and the wall minutes of each training. A PNG shows the accuracies.

Every finished piece is kept (`OUTPUT/CNN/result-*.json`): run again with the same OUTPUT and
settings, the script resumes an interrupted training and skips what has finished (a float
model's two files copied into another OUTPUT are kept there too).

References:
    - ReActNet (two-step training, distributional loss): https://arxiv.org/abs/2003.03488
    - Bi-Real Net (real-valued shortcuts, `--shortcuts auto`): https://arxiv.org/abs/1808.00278

Usage (from the repository root; reads Debian's `dataset-fashion-mnist`):
    .venv/bin/python benchmarks/binarize_cnns.py --output runs/binarize-cnns
    .venv/bin/python benchmarks/binarize_cnns.py --quick --output /tmp/quick   # a few minutes
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bnn_keras import files  # noqa: E402  (first: bnn_keras sets up tf-keras for TensorFlow)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bnn_keras.binarization import BinarizeOptions  # noqa: E402
from bnn_keras.errors import BnnError  # noqa: E402
from bnn_keras.training import TrainConfig, binarized, stages  # noqa: E402
from bnn_keras.training import data as data_lib  # noqa: E402
from bnn_keras.training.config import CONFIG_FILE, METRICS_FILE, MODEL_FILE  # noqa: E402
from bnn_keras.training.precision import as_float32, hardware_summary, resolve_precision  # noqa: E402
from bnn_keras.training.run import resume_training, train  # noqa: E402
from float_cnns import FLOAT_CNNS  # noqa: E402

# The float CNNs' own normalization (the Keras examples divide pixels by 255).
PIXEL_STD = 255.0
# A real-valued shortcut around each binary conv where the shapes allow (Bi-Real Net): a
# ResNet has them already around pairs of convs; the other two have none to add.
SHORTCUTS = {"mnist-convnet": "none", "vgg-style": "none", "resnet20": "auto"}
VARIANTS = ("teacher", "labels")


def fashion_mnist_arrays(data_dir: Optional[str]):
    """Fashion-MNIST's train and test splits as arrays of pixels / 255 and labels."""
    splits = data_lib.load_dataset("fashion_mnist", data_dir)

    def arrays(dataset: tf.data.Dataset):
        images, labels = zip(*dataset.batch(10_000).as_numpy_iterator())
        return (np.concatenate(images).astype(np.float32) / PIXEL_STD,
                np.concatenate(labels).astype(np.int64))

    return arrays(splits.train), arrays(splits.test)


def train_float(name: str, folder: Path, args: argparse.Namespace, data) -> Dict[str, Any]:
    """The float CNN trained with plain Keras `fit`, saved as folder/float.keras (float32)."""
    from convert.converter import convert_to_flatbuffer

    (x_train, y_train), (x_test, y_test) = data
    tf.keras.utils.set_random_seed(args.seed)
    tf.keras.mixed_precision.set_global_policy(args.precision)
    try:
        model = FLOAT_CNNS[name](x_train.shape[1:], 10)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    steps = args.float_epochs * (args.steps_per_epoch or -(-len(x_train) // 128))
    model.compile(tf.keras.optimizers.Adam(
        tf.keras.optimizers.schedules.CosineDecay(1e-3, steps)),
        "sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"\n{name}: float training, {args.float_epochs} epochs of batch 128 "
          f"({args.precision})", flush=True)
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=128, epochs=args.float_epochs,
              steps_per_epoch=args.steps_per_epoch, verbose=args.verbose)
    seconds = time.perf_counter() - start
    model = as_float32(model)
    accuracy = float(np.mean(model.predict(x_test, batch_size=500, verbose=0).argmax(-1)
                             == y_test))
    with files.atomic_path(folder / "float.keras") as tmp:
        model.save(tmp)
    tflite = convert_to_flatbuffer(model, target="arm64").data
    return {"test_accuracy": accuracy, "minutes": seconds / 60,
            "tflite_bytes": len(tflite), "params": model.count_params()}


def bnn_config(name: str, folder: Path, args: argparse.Namespace) -> TrainConfig:
    """What `bnn binarize folder/float.keras --dataset fashion_mnist --mean 0 --std 255` trains
    (its recipe: 2 steps of `--step-epochs` each, batch 64, Adam 5e-4 decayed linearly)."""
    options = BinarizeOptions(shortcuts=SHORTCUTS[name]).to_dict()
    options.pop("kernel_quantizer")
    return TrainConfig(
        model=binarized.BINARIZED, teacher=str(folder / "float.keras"), recipe="paper",
        image_size=28, dataset="fashion_mnist", data_dir=args.data_dir, model_options=options,
        normalize_mean="0", normalize_std=str(PIXEL_STD), epochs=args.step_epochs,
        steps_per_epoch=args.steps_per_epoch, seed=args.seed, precision=args.precision)


def train_with_teacher(config: TrainConfig, run_dir: Path, verbose: int) -> Path:
    """`bnn binarize`'s staged run (or its resume, after an interruption)."""
    if stages.is_staged_run(run_dir):
        stages.resume_staged(run_dir, verbose=verbose, report=print)
    else:
        stages.train_staged(config, run_dir, verbose=verbose, report=print)
    return run_dir


def train_on_labels(config: TrainConfig, run_dir: Path, verbose: int) -> Path:
    """The staged run's two steps, each its own run folder under run_dir, learning the labels:
    the float model only gives the binarized model its weights. Returns step 2's folder."""
    from bnn_keras.model_files import load_model_file

    source = load_model_file(config.teacher, what="the float model")
    plan = stages.plan_stages(config)
    weights = None
    for stage in plan.stages:
        folder = run_dir / stage.folder
        step = dataclasses.replace(stage.config, teacher=None, weights=None,
                                   **{field: None for field in stages.DISTILL_OPTIONS})
        build = binarized.binarized_builder(source, step.model_options, weights=weights)
        print(f"Step {stage.name} ({stage.note}), labels only", flush=True)
        if (folder / METRICS_FILE).is_file():
            pass  # finished in an earlier invocation
        elif (folder / CONFIG_FILE).is_file():
            resume_training(folder, build, recipe=stage.recipe, verbose=verbose)
        else:
            train(step, build, folder, recipe=stage.recipe, verbose=verbose)
        weights = str(folder / MODEL_FILE)
    return folder


def bnn_result(run_dir: Path, trained: Path) -> Dict[str, Any]:
    """The trained BNN's test accuracy and minutes (both steps), and its verified conversion."""
    from convert.workflow import convert_trained_model

    minutes = 0.0
    for metrics in sorted(run_dir.glob("stages/*/" + METRICS_FILE)):
        minutes += json.loads(metrics.read_text())["wall_time_s"] / 60
    metrics = json.loads((trained / METRICS_FILE).read_text())
    report = convert_trained_model(trained, output=str(run_dir / "model.tflite"),
                                   overwrite=True)
    return {"test_accuracy": metrics["test_accuracy"], "minutes": minutes,
            "tflite_bytes": report.size_bytes, "lce_bconv2d": report.lce_bconvs,
            "binary_convs": report.binary_layers,
            "binary_mac_fraction": report.binary_mac_fraction,
            "agreement": report.verification.top1_agreement}


def measured(path: Path, measure) -> Dict[str, Any]:
    """The result kept at `path` by an earlier invocation, or `measure()`'s, kept there."""
    if path.is_file():
        return json.loads(path.read_text())
    result = measure()
    files.write_json(path, result)
    return result


def _accuracy_cell(result: Optional[Dict[str, Any]], float_accuracy: float) -> str:
    if result is None:
        return "-"
    accuracy = result["test_accuracy"]
    return f"{accuracy:.2%} ({100 * (accuracy - float_accuracy):+.1f})"


def print_table(results: Dict[str, Dict[str, Any]]) -> None:
    print("| float CNN | params | float acc. | BNN acc., teacher | BNN acc., labels only | "
          "binarized MACs | LceBconv2d / binary convs | .tflite float -> BNN | minutes: float, "
          "BNN teacher, BNN labels |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        f = r["float"]
        bnn = r.get("teacher") or r["labels"]
        minutes = ", ".join("-" if r.get(k) is None else f"{r[k]['minutes']:.1f}"
                            for k in ("float", "teacher", "labels"))
        print(f"| {name} | {f['params']:,} | {f['test_accuracy']:.2%} | "
              f"{_accuracy_cell(r.get('teacher'), f['test_accuracy'])} | "
              f"{_accuracy_cell(r.get('labels'), f['test_accuracy'])} | "
              f"{bnn['binary_mac_fraction']:.1%} | {bnn['lce_bconv2d']} / {bnn['binary_convs']} | "
              f"{f['tflite_bytes']:,} -> {bnn['tflite_bytes']:,} B "
              f"({f['tflite_bytes'] / bnn['tflite_bytes']:.1f}x) | {minutes} |")


def plot(results: Dict[str, Dict[str, Any]], path: Path, title: str) -> None:
    """Grouped bars: float, BNN with teacher, BNN on labels, per CNN."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = (("float", "float CNN"), ("teacher", "BNN, float model as teacher"),
            ("labels", "BNN, labels only"))
    names = list(results)
    width = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        shown = [n for n, name in enumerate(names) if results[name].get(key) is not None]
        values = [100 * results[names[n]][key]["test_accuracy"] for n in shown]
        drawn = ax.bar([n + (i - 1) * width for n in shown], values, width, label=label)
        ax.bar_label(drawn, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    lowest = min(100 * r[k]["test_accuracy"] for r in results.values() for k, _ in bars
                 if r.get(k) is not None)
    ax.set_ylim(max(0, int(lowest) - 5), 105)
    ax.legend(fontsize=8, loc="upper center", ncol=len(bars), frameon=False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/binarize-cnns",
                        help="Folder of the runs and results (resumed when it exists).")
    parser.add_argument("--cnns", default=",".join(FLOAT_CNNS),
                        help=f"Comma-separated, of: {', '.join(FLOAT_CNNS)}.")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="The BNNs to train: teacher (bnn binarize's distilled run), "
                             "labels (the same steps without the teacher).")
    parser.add_argument("--float-epochs", type=int, default=15)
    parser.add_argument("--step-epochs", type=int, default=5,
                        help="Epochs of each of the BNN's two steps.")
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--precision", default="auto",
                        help="auto (mixed_bfloat16 where native), float32 or mixed_bfloat16.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None,
                        help="Folder of Fashion-MNIST's IDX files [default: Debian's].")
    parser.add_argument("--quick", action="store_true",
                        help="1 epoch of 20 steps everywhere: checks the script, not accuracy.")
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.cnns.split(",") if n.strip()]
    unknown = [n for n in names if n not in FLOAT_CNNS]
    if unknown or not names:
        parser.error(f"--cnns {args.cnns}: give some of {', '.join(FLOAT_CNNS)}.")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        parser.error(f"--variants {args.variants}: give some of {', '.join(VARIANTS)}.")
    if args.quick:
        args.float_epochs, args.step_epochs, args.steps_per_epoch = 1, 1, 20
    try:
        args.precision = resolve_precision(args.precision)
        data = fashion_mnist_arrays(args.data_dir)
    except BnnError as exc:
        parser.error(str(exc))
    output = Path(args.output)
    settings = {key: getattr(args, key) for key in (
        "float_epochs", "step_epochs", "steps_per_epoch", "precision", "seed")}
    kept = output / "settings.json"
    if kept.is_file() and json.loads(kept.read_text()) != settings:
        parser.error(f"{output} holds the results of other settings "
                     f"({kept.read_text().strip()}): give another --output.")
    output.mkdir(parents=True, exist_ok=True)
    files.write_json(kept, settings)
    machine = hardware_summary()
    load = os.getloadavg()[0]
    results = {}
    for name in names:
        folder = output / name
        folder.mkdir(parents=True, exist_ok=True)
        float_result = measured(folder / "result-float.json",
                                lambda: train_float(name, folder, args, data))
        config = bnn_config(name, folder, args)
        print(f"\n{name}: float test accuracy {float_result['test_accuracy']:.4f}", flush=True)
        results[name] = {"float": float_result, "teacher": None, "labels": None}
        if "teacher" in variants:
            print(f"\n{name}: binarized, the float model as teacher", flush=True)
            results[name]["teacher"] = measured(folder / "result-teacher.json", lambda: bnn_result(
                folder / "bnn-teacher",
                train_with_teacher(config, folder / "bnn-teacher", args.verbose)))
        if "labels" in variants:
            print(f"\n{name}: binarized, labels only", flush=True)
            results[name]["labels"] = measured(folder / "result-labels.json", lambda: bnn_result(
                folder / "bnn-labels",
                train_on_labels(config, folder / "bnn-labels", args.verbose)))
        files.write_json(output / "results.json", {
            "machine": machine, "precision": args.precision, "float_epochs": args.float_epochs,
            "step_epochs": args.step_epochs, "steps_per_epoch": args.steps_per_epoch,
            "seed": args.seed, "results": results})
    title = (f"Fashion-MNIST: each float CNN, then bnn binarize ({args.step_epochs} + "
             f"{args.step_epochs} epochs), {args.precision}\n{machine}")
    print(f"\n{title.replace(chr(10), '; ')}; load average {load:.2f} -> {os.getloadavg()[0]:.2f}\n")
    print_table(results)
    plot(results, output / "binarize_cnns.png", title)
    print(f"\nRun folders, results.json and binarize_cnns.png in {output}")


if __name__ == "__main__":
    main()
