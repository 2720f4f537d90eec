"""Shared fixtures: one tiny BinaryDenseNet28 trained on digits and its LCE flatbuffer.

Training and converting even a few steps of BinaryDenseNet28 costs about a minute each on the
2-core CI machine, so the run and its conversion are made once per run of the suite (through
the `bnn` CLI exactly as a user would, kept in pytest's cache folder by tests/artefacts.py), and
each test process reads its own copy: the training, CLI, conversion and end-to-end tests.
"""

import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Any, Dict, Tuple

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
# One thread for TensorFlow's kernels and one for its independent ops, in this process and the
# `bnn` processes that tests start (they inherit the environment). `make test` runs one
# pytest-xdist worker per core, and TensorFlow sizes both of its pools to every core of the
# machine: two workers then run four busy pools on two cores, and the suite's tiny models gain
# nothing from a second thread but its hand-offs. Measured on the 2-core AVX2 machine: four test
# modules under two workers 0.94x the wall time and 0.96x the CPU time, and four tiny `bnn train`
# runs in one process 0.89x the CPU time. Read when TensorFlow creates its context (its first op);
# a value the caller set is kept.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import bnn_keras  # noqa: E402,F401
from tests.artefacts import ArtefactCache, cache_root, copy_of, source_key  # noqa: E402

# The repository, and the files that earlier versions of bnn wrote (tests/fixtures/vX.Y).
REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# The suite's digits run trains at the data's own 8x8 (the CLI's default for digits is 16x16):
# a quarter of the compute in every training step and every prediction of its test split. With
# 2 epochs of 18 steps it reaches ~78% test accuracy on the AVX2 machine (16x16, 2 x 12 steps:
# 73%, in twice the time).
DIGITS_IMAGE_SIZE = 8
DIGITS_SHAPE = (DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE, 1)
TRAIN_ARGS = [
    "train", "binary-densenet28", "--dataset", "digits", "--image-size", str(DIGITS_IMAGE_SIZE),
    "--epochs", "2", "--steps-per-epoch", "18", "--batch-size", "32", "--lr", "2e-3",
    "--seed", "0", "--verbose", "0",
]


@dataclasses.dataclass
class TrainedRun:
    run_dir: Path
    model: Any
    metrics: Dict[str, Any]
    config: Dict[str, Any]
    cli_output: str


def tiny_lce_model(channels: int = 1):
    """A float conv + BN + one binary conv + GAP + softmax dense on 8x8 inputs: the smallest
    model that LCE turns into a real LceBconv2d (a conversion takes seconds).

    Its weights are seeded: an untrained model has near-ties that float rounding may break
    either way in Keras and in the flatbuffer, so the same model is built whatever ran before
    in the process (tests compare top-1 decisions on it)."""
    import larq as lq
    import tensorflow as tf

    def seeded(seed):
        return tf.keras.initializers.GlorotUniform(seed=seed)

    inputs = tf.keras.Input((8, 8, channels))
    x = lq.layers.QuantConv2D(8, 3, kernel_quantizer="ste_sign", use_bias=False,
                              kernel_initializer=seeded(1), name="conv1")(inputs)
    x = tf.keras.layers.BatchNormalization(name="bn1")(x)
    x = lq.layers.QuantConv2D(8, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
                              kernel_quantizer="ste_sign", use_bias=False,
                              kernel_initializer=seeded(2), name="conv2")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = tf.keras.layers.Dense(4, activation="softmax", kernel_initializer=seeded(3),
                                    name="head")(x)
    return tf.keras.Model(inputs, outputs)


def invoke(args, **kwargs):
    """Runs the `bnn` CLI in-process and returns click's Result."""
    import cli

    return CliRunner().invoke(cli.main, [str(a) for a in args], **kwargs)


@pytest.fixture(scope="session")
def artefacts(request, tmp_path_factory) -> ArtefactCache:
    """Trained and converted artefacts shared by every test process (tests/artefacts.py)."""
    root = cache_root(request.config, fallback=tmp_path_factory.mktemp("artefacts"))
    return ArtefactCache(root, source_key())


@dataclasses.dataclass
class CliOutput:
    """What a test reads of a cached command's click Result."""

    output: str  # stdout and stderr interleaved, as click's Result.output
    stdout: str


def _cli_artefact(artefacts, name: str, args) -> Path:
    """The folder of a `bnn` command's artefact, made once: "OUT" at the start of an argument
    stands for the folder. The command's output is kept beside what it wrote."""

    def build(folder: Path) -> None:
        result = invoke([str(folder) + a[3:] if str(a).startswith("OUT") else a for a in args])
        assert result.exit_code == 0, result.output
        (folder / "cli_output.txt").write_text(result.output)
        (folder / "cli_stdout.txt").write_text(result.stdout)

    return artefacts.folder(name, build)


def _private_copy(cached: Path, tmp_path_factory, name: str) -> Tuple[Path, CliOutput]:
    """A copy of a cached artefact folder for this process, and its command's output with the
    cached folder's path replaced by the copy's (the output names the files it wrote)."""
    folder = tmp_path_factory.mktemp(name) / cached.name
    copy_of(cached, folder)
    output, stdout = ((folder / f"cli_{kind}.txt").read_text().replace(str(cached), str(folder))
                      for kind in ("output", "stdout"))
    return folder, CliOutput(output=output, stdout=stdout)


@pytest.fixture(scope="session")
def _digits_run_artefact(artefacts) -> Path:
    return _cli_artefact(artefacts, "digits_run", [*TRAIN_ARGS, "--output", "OUT/digits"])


@pytest.fixture(scope="session")
def digits_run(_digits_run_artefact, tmp_path_factory) -> TrainedRun:
    """`bnn train binary-densenet28` on digits, 2 epochs x 18 steps (mixed precision where the
    CPU has bf16, so conversion exercises the float32 rebuild)."""
    import tensorflow as tf

    folder, output = _private_copy(_digits_run_artefact, tmp_path_factory, "runs")
    run_dir = folder / "digits"
    return TrainedRun(
        run_dir=run_dir,
        model=tf.keras.models.load_model(run_dir / "model.keras"),
        metrics=json.loads((run_dir / "metrics.json").read_text()),
        config=json.loads((run_dir / "config.json").read_text()),
        cli_output=output.output,
    )


@pytest.fixture(scope="session")
def digits_convert(artefacts, _digits_run_artefact, tmp_path_factory):
    """`bnn convert RUN --target arm64 -o digits.tflite --bundle pi`: (path, CliOutput)."""
    cached = _cli_artefact(artefacts, "digits_convert", [
        "convert", _digits_run_artefact / "digits", "--target", "arm64",
        "-o", "OUT/digits.tflite", "--bundle", "OUT/pi"])
    folder, output = _private_copy(cached, tmp_path_factory, "tflite")
    return folder / "digits.tflite", output


@pytest.fixture(scope="session")
def digits_tflite(digits_convert) -> Path:
    return digits_convert[0]


@pytest.fixture(scope="session")
def digits_flatbuffer(digits_tflite) -> bytes:
    return digits_tflite.read_bytes()


# The size every registry model is converted at by the fast tests: small enough to convert in
# seconds, large enough for every stem and head (fc6 too) to be built as at 224 px.
SMALL_REGISTRY_INPUT = dict(input_shape=(32, 32, 3), num_classes=10)


@pytest.fixture(scope="session")
def small_registry_flatbuffer(artefacts):
    """`get(key, model)`: the LCE flatbuffer (arm64) of the registry build `key` at
    `SMALL_REGISTRY_INPUT` (a model's name, or "NAME:narrow" for its build with fewer units),
    converted once per run of the suite (and kept for the next run) and read by every test that
    needs it: the op counts and the size predictions of tests/models/test_models.py. `model` is
    the caller's build of `key`: a conversion does not depend on the weights' values, so a fresh
    build's flatbuffer stands for any."""
    from convert.converter import convert_to_flatbuffer
    from convert.flatbuffer import Flatbuffer

    def get(key: str, model) -> "Flatbuffer":
        def build(folder: Path) -> None:
            (folder / "model.tflite").write_bytes(bytes(convert_to_flatbuffer(model)))

        folder = artefacts.folder(f"registry-32x32x3-{key.replace(':', '-')}", build)
        return Flatbuffer((folder / "model.tflite").read_bytes())

    return get


# `bnn train` options of a tiny run: 8x8 digits, 1 epoch of 2 steps, float32.
TINY_TRAIN_OPTIONS = ("--dataset", "digits", "--image-size", "8", "--epochs", "1",
                      "--steps-per-epoch", "2", "--batch-size", "16", "--precision", "float32",
                      "--verbose", "0")


# The smallest registry model that trains at 8x8 (`bnn train` arguments): ReActNet-A with a
# width-8 stem and two blocks, ~4k parameters (binarynet at 8x8: ~6M, 71 MB per save).
TINY_REACTNET = ("reactnet-a", "--model-option", "widths=[8,16,16]")


@pytest.fixture(scope="session")
def float_teacher_run(artefacts, tmp_path_factory) -> Path:
    """`bnn train reactnet-a --float` (`TINY_REACTNET`) with `TINY_TRAIN_OPTIONS`: a float
    teacher for distillation whose layer names are those of the `TINY_REACTNET` student."""
    cached = _cli_artefact(artefacts, "float_teacher_run", [
        "train", *TINY_REACTNET, "--float", *TINY_TRAIN_OPTIONS, "-o", "OUT/reactnet"])
    folder, _ = _private_copy(cached, tmp_path_factory, "float")
    return folder / "reactnet"


@dataclasses.dataclass
class ResumedOldRun:
    run_dir: Path
    output: CliOutput
    config_reads: int  # the RunRecord.read calls the resume made (config.json read, validated)


@pytest.fixture(scope="session")
def resumed_v02_interrupted_run(artefacts, tmp_path_factory) -> ResumedOldRun:
    """bnn 0.2's interrupted run (tests/fixtures/v0.2/interrupted_run: 2 of 3 epochs of 150
    steps) after `bnn train --resume RUN`, with the number of times the resume read its
    config.json. tests/cli/test_old_runs.py and tests/training/test_run_record.py check this
    one resume (8-10 s; each made its own before). Tests read it only."""
    from bnn_keras.training.config import RunRecord

    source = FIXTURES / "v0.2" / "interrupted_run"

    def build(folder: Path) -> None:
        copy_of(source, folder / "run")
        reads = []
        read = RunRecord.read.__func__

        def counting(cls, run_dir):
            reads.append(str(run_dir))
            return read(cls, run_dir)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(RunRecord, "read", classmethod(counting))
            result = invoke(["train", "--resume", folder / "run"])
        assert result.exit_code == 0, result.output
        (folder / "cli_output.txt").write_text(result.output)
        (folder / "cli_stdout.txt").write_text(result.stdout)
        (folder / "config_reads.json").write_text(json.dumps(reads))

    cached = artefacts.folder("v0.2-interrupted-resumed", build)
    folder, output = _private_copy(cached, tmp_path_factory, "resumed")
    reads = json.loads((folder / "config_reads.json").read_text())
    return ResumedOldRun(run_dir=folder / "run", output=output, config_reads=len(reads))


def tiny_bnn(input_shape, num_classes):
    """A stem conv and one binary conv: a BNN that trains a few steps in a second."""
    import larq as lq
    import tensorflow as tf

    inputs = tf.keras.Input(input_shape)
    x = tf.keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = tf.keras.layers.BatchNormalization(name="stem_bn")(x)
    x = lq.layers.QuantConv2D(16, 3, padding="same", pad_values=1.0, use_bias=False,
                              input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                              kernel_constraint="weight_clip", name="bconv")(x)
    x = tf.keras.layers.BatchNormalization(name="bconv_bn")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = tf.keras.layers.Dense(num_classes, name="dense")(x)
    outputs = tf.keras.layers.Activation("softmax", dtype="float32")(x)
    return tf.keras.Model(inputs, outputs)


def tiny_config(**overrides):
    """A TrainConfig for `tiny_bnn` on 8x8 digits: 3 epochs of 4 steps."""
    options = dict(model="tiny", dataset="digits", image_size=8, epochs=3, steps_per_epoch=4,
                   batch_size=16, learning_rate=1e-2, precision="float32", seed=0)
    options.update(overrides)
    from bnn_keras import training

    return training.TrainConfig(**options)


# The slowest test modules, in the order `make test` starts them (seconds of their tests in a
# `make test` run on the AVX2 machine, fixture set-up included). `make test` hands whole modules
# to its two workers in collection order (`--no-loadscope-reorder`; pytest-xdist would order
# them by their number of tests), and this order puts the long ones first, so that both workers
# end together rather than one running a long module alone at the end (longest-first
# scheduling). One exception: tests/cli/test_cli.py goes first, because its session fixture
# trains and converts the digits run that seven other modules read (tests/artefacts.py); started
# later, the worker that needs that run first waited ~35 s on the other one building it. Other
# modules follow in their usual order. A module missing here only costs balance, never a test.
SLOW_MODULES = (
    "tests/cli/test_cli.py",  # 62 s, of which ~35 s build the digits run and its .tflite
    "tests/models/test_models.py",  # 138 s
    "tests/models/test_zoo_variants.py",  # 67 s
    "tests/models/test_real_to_binary.py",  # 62 s
    "tests/training/test_distill_train.py",  # 43 s
    "tests/training/test_run.py",  # 42 s, once the digits run is built
    "tests/training/test_stages.py",  # 41 s
    "tests/cli/test_faults_messages.py",  # 37 s
    "tests/convert/test_prediction.py",  # 35 s
    "tests/training/test_faults_train.py",  # 35 s
    "tests/cli/test_distill_cli.py",  # 34 s
    "tests/models/test_meliusnet.py",  # 28 s
    "tests/cli/test_old_runs.py",  # 26 s
    "tests/training/test_train_weights.py",  # 26 s
    "tests/training/test_tricks.py",  # 24 s
    "tests/cli/test_binarize_cli.py",  # 24 s
    "tests/convert/test_range_balance.py",  # 22 s
    "tests/convert/test_int8.py",  # 21 s
    "tests/convert/test_faults_convert.py",  # 19 s
    "tests/training/test_distribute.py",  # 18 s
    "tests/convert/test_converter.py",  # 18 s
    "tests/training/test_run_inputs.py",  # 18 s
)


def pytest_collection_modifyitems(config, items):
    """Collects `SLOW_MODULES` first, in their order (a stable sort: each module's tests stay
    together and in their own order)."""
    rank = {module: position for position, module in enumerate(SLOW_MODULES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def pytest_collection_finish(session):
    """Moves what collection left alive (TensorFlow, Keras, larq and every test module, ~300k
    objects) out of the garbage collector's reach: they live until the process ends, and each
    full collection would otherwise walk them again (0.15 s each on the AVX2 machine, ~100 full
    collections per run of the suite)."""
    import gc

    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True, scope="session")
def _own_figures_cache(tmp_path_factory):
    """`bnn models` keeps its figures in the user's cache folder (`models.figures`): the suite
    uses a folder of its own (child processes inherit it), never the home folder's."""
    previous = os.environ.get("BNN_CACHE_DIR")
    os.environ["BNN_CACHE_DIR"] = str(tmp_path_factory.mktemp("bnn-cache"))
    yield
    if previous is None:
        os.environ.pop("BNN_CACHE_DIR", None)
    else:
        os.environ["BNN_CACHE_DIR"] = previous


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_raises_keyboard_interrupt():
    """Tests press Ctrl-C by sending SIGINT to this process (or to a `bnn` child process). A
    shell starts a background job (`make test &`, nohup) with SIGINT ignored, and Python then
    never installs its handler: the interrupt would be lost and those tests fail for it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True, scope="module")
def _fresh_keras_graph_per_module():
    """Frees what a test module's models leave in Keras's global graph: without this the
    functional models that ~650 tests build (several at 224x224) grow one pytest process past
    24 GB. A session fixture's models keep working: they hold their own variables.

    The graph is reset after every module (layer names start again from "conv2d"); see
    `_free_keras_memory_collecting_when_large` for the garbage collection."""
    yield
    _free_keras_memory_collecting_when_large()


# A pytest process's resident memory above which the fixtures that free Keras memory collect
# garbage: two workers stay well inside the 24 GB machine.
COLLECT_ABOVE_BYTES = 3 * 2**30


def _free_keras_memory_collecting_when_large() -> None:
    """`free_keras_memory`, with Python's full garbage collection, which takes 0.1-1 s in a
    process that has built many models (~20 s of a suite run), only once the process holds more
    than `COLLECT_ABOVE_BYTES`."""
    free_keras_memory(collect=_resident_bytes() > COLLECT_ABOVE_BYTES)


def _resident_bytes() -> int:
    """This process's resident memory (Linux); on other systems, more than any threshold."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 2**63
    return pages * os.sysconf("SC_PAGE_SIZE")


def free_keras_memory(collect: bool = True) -> None:
    """Frees what the models built so far left behind (a model still referenced keeps working:
    it holds its own variables); `collect=False` leaves the cycles among the freed objects to
    Python's own garbage collection.

    Keras's global graph is one part. The other is TensorFlow's gradient registry: each
    `tf.custom_gradient` call in graph mode (larq's quantizers, while Keras builds a functional
    model) registers its gradient function under a new name, for good, and that function holds
    the layer's tensors, so every quantized kernel built stays in memory (measured: 128 MB per
    4096x8192 QuantDense, freed by nothing else). A graph that is still used keeps its gradients:
    they are looked up when a gradient is traced, which a new trace registers again.
    """
    import gc

    import tensorflow as tf
    from tensorflow.python.framework import ops

    registry = ops._gradient_registry._registry
    for name in [name for name in registry if name.startswith("CustomGradient-")]:
        del registry[name]
    tf.keras.backend.clear_session()
    if collect:
        gc.collect()


@pytest.fixture
def frees_keras_memory():
    """Frees, after the test, what its models left in Keras's global graph: for tests that build
    ImageNet-size models (up to 62M parameters), so that their memory does not add up until the
    end of the module (garbage collected as after a module)."""
    yield
    _free_keras_memory_collecting_when_large()
