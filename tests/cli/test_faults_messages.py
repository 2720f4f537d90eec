"""Issue 13, user errors are user errors: each bad input or refused write gets one line naming
what to fix and exit code 2, never "Internal error", a long hang, or gigabytes of memory.

Covers: read-only and full disks (OSError and tf.errors alike), --num-classes 0 and an
--input-shape too small for the model, broken JSON in --model-option, a corrupt image in a
folder data set, the offline TFDS probe, `import tensorflow; import bnn_keras`, and an image
too large to decode for `bnn predict`.
"""

import errno
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import files
from bnn_keras.training import data
from bnn_keras.errors import BnnError, storage_error_message
from tests.conftest import REPO_ROOT, invoke, tiny_lce_model

EXIT_USER_ERROR = 2


def _error_line(result) -> str:
    """The one `Error: ...` line of a failed command (click prints usage lines before it)."""
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert "Internal error" not in result.output and "Traceback" not in result.output
    return lines[0]


# ----------------------------------------------------------------------------------------------
# Read-only, permission and full disks


def _mount_tmpfs(folder: Path, read_only: bool) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                          capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    if read_only:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    _mount_tmpfs(folder, read_only=True)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def full_dir(tmp_path):
    folder = tmp_path / "full"
    _mount_tmpfs(folder, read_only=False)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _raised(fn) -> BaseException:
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def _small_model():
    return tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(4000)])  # 80 kB


def test_read_only_disk_messages_name_the_path(read_only_dir):
    model = _small_model()
    checkpoint = tf.train.Checkpoint(model=model)
    cases = {
        # Python's OSError (EROFS) from Keras' zip writer and from our atomic writes.
        "model.keras": lambda: model.save(read_only_dir / "model.keras"),
        "out.json": lambda: files.write_json(read_only_dir / "out.json", {"a": 1}),
        # h5py's OSError has no filename attribute: the path comes from its message.
        "w.weights.h5": lambda: model.save_weights(str(read_only_dir / "w.weights.h5")),
        # TensorFlow's C++ file system: tf.errors.PermissionDeniedError.
        "ckpt": lambda: checkpoint.write(str(read_only_dir / "ckpt")),
    }
    for name, write in cases.items():
        exc = _raised(write)
        assert storage_error_message(exc) == (
            f"cannot write {read_only_dir / name}: Read-only file system "
            "(choose another output location)"), (name, type(exc), exc)


def test_full_disk_messages(full_dir):
    model = _small_model()
    exc = _raised(lambda: tf.train.Checkpoint(model=model).write(str(full_dir / "ckpt")))
    assert isinstance(exc, tf.errors.ResourceExhaustedError)
    assert storage_error_message(exc) == (
        f"cannot write {full_dir / 'ckpt'}: No space left on device "
        "(free space or choose another output location)")
    exc = _raised(lambda: files.write_bytes(full_dir / "big.bin", b"x" * 200_000))
    assert storage_error_message(exc).endswith(
        "No space left on device (free space or choose another output location)")


def test_other_errors_are_not_storage_errors():
    assert storage_error_message(OSError(errno.ECONNRESET, "Connection reset")) is None
    assert storage_error_message(ValueError("x")) is None
    oom = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    assert storage_error_message(oom) is None
    # A storage failure wrapped by a library (`raise ... from`) is still found.
    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/srv/out.tflite")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as outer:
        assert storage_error_message(outer) == (
            "cannot write /srv/out.tflite: Permission denied "
            "(check the permissions or choose another output location)")


@pytest.fixture
def failing_command():
    """A throw-away `bnn` sub-command that raises the exception it is given."""
    import cli

    to_raise = []

    @cli.main.command("_raise-for-test")
    def raise_for_test():
        raise to_raise[0]

    yield to_raise
    cli.main.commands.pop("_raise-for-test")


@pytest.mark.parametrize("exc, expected", [
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/model.keras"),
     "Error: cannot write /mnt/ro/model.keras: Read-only file system (choose another output "
     "location)"),
    (OSError(errno.ENOSPC, "No space left on device"),
     "Error: cannot write the output: No space left on device (free space or choose another "
     "output location)"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/home/u/run/.model.partial-77.keras"),
     "Error: cannot write /home/u/run/model.keras: Disk quota exceeded (free space or choose "
     "another output location)"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x.tflite"),
     "Error: cannot write /root/x.tflite: Permission denied (check the permissions or choose "
     "another output location)"),
    (tf.errors.PermissionDeniedError(None, None, "/mnt/ro/run/backup/ckpt-1_temp; Read-only "
                                     "file system"),
     "Error: cannot write /mnt/ro/run/backup/ckpt-1: Read-only file system (choose another "
     "output location)"),
])
def test_cli_reports_storage_errors_as_user_errors(failing_command, exc, expected):
    failing_command.append(exc)
    result = invoke(["_raise-for-test"])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert _error_line(result) == expected


def test_cli_keeps_other_os_errors_internal(failing_command):
    failing_command.append(OSError(errno.ECONNRESET, "Connection reset by peer"))
    result = invoke(["_raise-for-test"])
    assert result.exit_code == 1
    assert "Internal error: ConnectionResetError" in result.output or \
        "Internal error: OSError" in result.output


# ----------------------------------------------------------------------------------------------
# --num-classes, --input-shape


@pytest.mark.parametrize("command", [
    ["models", "binarynet"], ["summary", "binarynet"], ["inspect", "binarynet"]])
def test_zero_classes_names_the_option(command):
    result = invoke([*command, "--num-classes", "0", "--input-shape", "16,16,1"])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert _error_line(result) == (
        "Error: Invalid value for '--num-classes': 0 is not in the range x>=1.")


@pytest.mark.parametrize("command", [
    ["models", "binarynet"], ["summary", "binarynet"], ["inspect", "binarynet"]])
def test_too_small_input_shape_names_the_smallest_that_works(command):
    result = invoke([*command, "--input-shape", "1,1,1", "--num-classes", "10"])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    line = _error_line(result)
    # "Smallest" is right only if BinaryNet builds at 8x8 and not at 7x7.
    assert line.startswith("Error: --input-shape 1,1,1 is too small for binarynet: the smallest "
                           "that works is --input-shape 8,8,1 (Keras: "), line
    import models

    models.create_model("binarynet", input_shape=(8, 8, 1), num_classes=10)
    with pytest.raises(ValueError):
        models.create_model("binarynet", input_shape=(7, 7, 1), num_classes=10)


def test_models_lists_those_that_fit_and_names_the_others():
    result = invoke(["models", "[bx]*net", "--input-shape", "8,8,1", "--num-classes", "10"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.splitlines()[2:]
              if line and not line.startswith(("Warning", "building"))]
    assert "binarynet" in listed and "xnornet" not in listed
    assert ("Warning: --input-shape 8,8,1 is too small for binary-alexnet, bnn-plus-alexnet, "
            "xnornet;"
            in result.output)


# ----------------------------------------------------------------------------------------------
# --model-option JSON


def test_broken_json_model_option_gives_the_json_error(tmp_path):
    result = invoke(["train", "binarynet", "--dataset", "digits", "--epochs", "1",
                     "--model-option", "stage_filters=[16,32", "-o", tmp_path / "run"])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert _error_line(result) == (
        "Error: Invalid value for --model-option stage_filters: invalid JSON '[16,32' at "
        "column 7: Expecting ',' delimiter")
    assert not (tmp_path / "run" / "model.keras").exists()


def test_model_option_values():
    import click

    from cli import _parse_model_options

    assert _parse_model_options(["stage_filters=[16, 32]", "name=plain_word", "n=3",
                                 "flag=true", "a-b=x y"]) == {
        "stage_filters": [16, 32], "name": "plain_word", "n": 3, "flag": True, "a_b": "x y"}
    for text, message in [('x={"a": 1', "column 8: Expecting ',' delimiter"),
                          ("x=12x", "column 3: Extra data"),
                          ("x=True", "column 1: Expecting value (JSON spells it true)")]:
        with pytest.raises(click.BadParameter, match=message.replace("(", r"\(").replace(
                ")", r"\)")):
            _parse_model_options([text])


# ----------------------------------------------------------------------------------------------
# Corrupt image in a folder data set


def _png(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(np.asarray(array, np.uint8)).numpy())
    return path


def _image_folder(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        for i in range(per_class):
            _png(root / "train" / c / f"{i}.png", rng.integers(0, 256, (8, 8, 3)))
            _png(root / "test" / c / f"{i}.png", rng.integers(0, 256, (8, 8, 3)))
    return root


@pytest.mark.parametrize("damage, reason", [
    (lambda b: b[: len(b) // 2], "Invalid PNG data"),  # truncated download
    (lambda b: b"<html>404 Not Found</html>", "Unknown image file format"),  # saved error page
    (lambda b: b"", "Input is empty"),
])
def test_corrupt_image_in_a_folder_is_named(tmp_path, damage, reason):
    root = _image_folder(tmp_path / "images")
    # In the test split: the old code only decoded the first training image up front.
    bad = root / "test" / "dog" / "3.png"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(BnnError) as info:
        data.load_dataset(f"folder:{root}")
    assert str(info.value).startswith(f"Image file {bad} cannot be decoded ({reason}")


def test_corrupt_image_in_a_folder_is_named_by_train(tmp_path):
    root = _image_folder(tmp_path / "images")
    bad = root / "train" / "cat" / "4.png"
    bad.write_bytes(bad.read_bytes()[:40])
    result = invoke(["train", "binarynet", "--dataset", f"folder:{root}", "--epochs", "1",
                     "--image-size", "8", "--verbose", "0", "-o", tmp_path / "run"])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert _error_line(result).startswith(f"Error: Image file {bad} cannot be decoded (")


def test_folder_normalization_is_unchanged_by_the_check(tmp_path):
    root = _image_folder(tmp_path / "images", per_class=20)
    splits = data.load_dataset(f"folder:{root}")
    images = np.stack([x.numpy() for x, _ in splits.train])
    expected = data.Normalization.from_images(images)
    np.testing.assert_allclose(splits.normalization.mean, expected.mean, rtol=1e-9)
    np.testing.assert_allclose(splits.normalization.std, expected.std, rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# Offline: one probe, not minutes of retries


def test_offline_tfds_fails_in_seconds_without_retrying(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    probes = []

    def unreachable(timeout=3.0):
        probes.append(timeout)
        return "cannot reach storage.googleapis.com:443: Name or service not known"

    def no_download(self, *args, **kwargs):
        raise AssertionError("TFDS started its download (and its retries)")

    monkeypatch.setattr(data.network, "network_unreachable_reason", unreachable)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    empty = tmp_path / "tfds"
    empty.mkdir()
    start = time.monotonic()
    result = invoke(["train", "binarynet", "--dataset", "mnist", "--data-dir", empty,
                     "--epochs", "1", "--verbose", "0", "-o", tmp_path / "run"])
    elapsed = time.monotonic() - start
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert _error_line(result).startswith(
        f"Error: No mnist IDX files in --data-dir {empty} (missing train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each "
        "optionally .gz); and TensorFlow Datasets: Could not download or prepare the TFDS data "
        "set 'mnist' (cannot reach storage.googleapis.com:443: Name or service not known). "
        "Offline, use --dataset digits")
    assert probes == [3.0]
    assert elapsed < 10, elapsed


def test_prepared_data_skips_the_probe(tmp_path, monkeypatch):
    class PreparedBuilder:
        prepared_calls = 0

        def is_prepared(self):
            return True

        def download_and_prepare(self):
            PreparedBuilder.prepared_calls += 1

    def must_not_probe(timeout=3.0):
        raise AssertionError("probed the network for a prepared data set")

    monkeypatch.setattr(data, "network_unreachable_reason", must_not_probe)
    data.tfds._prepare(PreparedBuilder(), "mnist", tmp_path)
    assert PreparedBuilder.prepared_calls == 1


def test_probe_connects_once_and_can_be_redirected_or_switched_off(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setenv(data.NETWORK_PROBE_ENV, f"127.0.0.1:{port}")
        assert data.network_unreachable_reason(timeout=2.0) is None
    # The port is closed now: refused at once, well inside the timeout.
    start = time.monotonic()
    reason = data.network_unreachable_reason(timeout=2.0)
    assert reason.startswith(f"cannot reach 127.0.0.1:{port}: ") and "refused" in reason
    assert time.monotonic() - start < 2.0
    monkeypatch.setenv(data.NETWORK_PROBE_ENV, "off")
    assert data.network_unreachable_reason() is None
    monkeypatch.delenv(data.NETWORK_PROBE_ENV)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert data.network._probe_address() == ("proxy.internal", 3128)


# ----------------------------------------------------------------------------------------------
# Import order (a fresh interpreter each: the point is what happens at import time)


def _python(code: str):
    environment = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment, timeout=300, cwd=REPO_ROOT)


def test_tensorflow_imported_first_then_bnn_keras_works():
    result = _python(
        "import tensorflow as tf\n"
        "import bnn_keras, larq\n"
        "from tensorflow.keras.optimizers.legacy import Optimizer\n"
        "print(tf.keras.layers.Layer.__module__.split('.')[0], Optimizer.__module__.split('.')[0],"
        " larq.optimizers.Bop.__mro__[1].__module__.split('.')[0])\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["tf_keras", "tf_keras", "tf_keras"]


@pytest.mark.parametrize("code", [
    "import tensorflow as tf\ntf.keras.layers.Dense\nimport bnn_keras",
    "import tensorflow as tf\nimport tensorflow.keras.layers\nimport bnn_keras",
])
def test_keras3_already_in_use_gives_our_error_not_larqs(code):
    result = _python(code)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("bnn_keras.errors.KerasVersionError: tf.keras is Keras 3"), \
        result.stderr[-2000:]
    assert "TF_USE_LEGACY_KERAS=1" in last_line
    assert "AttributeError" not in result.stderr


# ----------------------------------------------------------------------------------------------
# Pixel bomb


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG signature and IHDR chunk claiming width x height, and no pixel data: what a
    decompression bomb looks like to a header reader, without building one."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
                     + struct.pack(">I", zlib.crc32(chunk)))
    return path


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    from convert.converter import convert_model
    from convert.metadata import embed_metadata

    flatbuffer = embed_metadata(convert_model(tiny_lce_model(3)), {
        "dataset": "folder:x", "input_shape": [8, 8, 3], "num_classes": 4,
        "class_names": ["a", "b", "c", "d"], "pixel_max": 255.0,
        "normalization": {"mean": [127.0] * 3, "std": [64.0] * 3},
    })
    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    path.write_bytes(flatbuffer)
    return path


def test_predict_refuses_a_pixel_bomb_before_decoding_it(tiny_tflite, tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 12000, 12000)
    result = invoke(["predict", tiny_tflite, bomb])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert _error_line(result) == (
        f"Error: {bomb} is 12000x12000 pixels (144.0 megapixels), over the limit of 40 "
        "megapixels that keeps decoding it from taking gigabytes of memory; shrink it, or pass "
        "--max-pixels 144000000 to read it anyway.")


def test_max_pixels_raises_the_limit(tiny_tflite, tmp_path):
    image = _png(tmp_path / "a.png", np.random.default_rng(0).integers(0, 256, (40, 50, 3)))
    refused = invoke(["predict", tiny_tflite, image, "--max-pixels", "1999"])
    assert refused.exit_code == EXIT_USER_ERROR, refused.output
    assert "is 50x40 pixels" in _error_line(refused)
    accepted = invoke(["predict", tiny_tflite, image, "--max-pixels", "2000"])
    assert accepted.exit_code == 0, accepted.output
    assert accepted.output.startswith(f"{image}: ")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_image_file_size_reads_headers(tmp_path, fmt):
    from PIL import Image

    path = tmp_path / f"x.{fmt.lower()}"
    extra = {"exif": b"Exif\x00\x00" + b"\x00" * 5000} if fmt == "JPEG" else {}
    Image.new("RGB", (53, 37)).save(path, fmt, **extra)
    assert data.image_file_size(path) == (53, 37)
    (tmp_path / "not.png").write_bytes(b"hello")
    assert data.image_file_size(tmp_path / "not.png") is None


def test_offline_error_is_the_only_line_on_stderr(tmp_path):
    """TFDS' absl warnings ("Variant folder ... has no dataset_info.json") once came first."""
    empty = tmp_path / "tfds"
    empty.mkdir()
    env = {**os.environ, "BNN_NETWORK_PROBE": "127.0.0.1:9", "TFDS_DATA_DIR": str(empty)}
    result = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", "train", "binarynet", "--dataset",
         "mnist", "--data-dir", str(empty), "--epochs", "1", "-o", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=300,
        cwd=REPO_ROOT)
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"Error: No mnist IDX files in --data-dir {empty} (missing ") and (
        "and TensorFlow Datasets: Could not download or prepare the TFDS data set 'mnist' "
        "(cannot reach 127.0.0.1:9") in lines[0], lines


def test_model_option_of_the_wrong_type_is_a_user_error(tmp_path):
    result = invoke(["train", "quicknet", "--dataset", "digits", "--model-option",
                     "section_filters=16", "--epochs", "1", "-o", tmp_path / "run"])
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert _error_line(result).startswith(
        "Error: quicknet cannot be built with --model-option section_filters=16: ")
    assert not (tmp_path / "run").exists()


def test_a_reader_that_stops_reading_is_no_internal_error(tmp_path):
    """`bnn models | head`: the pipe's reader leaves before bnn has written all; bnn ends
    quietly with a shell's SIGPIPE status, not an "Internal error: BrokenPipeError" line."""
    env = {**os.environ, "BNN_CACHE_DIR": str(tmp_path)}
    reader, writer = os.pipe()
    os.close(reader)  # gone before bnn writes its first line
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import cli; cli.main()", "models", "binarynet",
             "--input-shape", "32,32,3", "--num-classes", "10"],
            stdout=writer, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT,
            timeout=300)
    finally:
        os.close(writer)
    assert result.returncode == 141, result.stderr
    assert "Internal error" not in result.stderr and "Traceback" not in result.stderr
