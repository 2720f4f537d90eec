"""Issue 13, convert side: outputs never destroy inputs, and no silently wrong result.

Each data-safety test records the sha256 of every file that existed before a refused `bnn
convert` and checks them afterwards. The model is a tiny binary network trained for a few
seconds on the 8x8 digits, in a hand-made run folder, so that a conversion takes seconds.
"""

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Dict

import bnn_keras  # noqa: F401  (must precede tensorflow)
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import invoke

DIGIT_NAMES = [str(d) for d in range(10)]
FAST = ["--samples", "16", "--min-agreement", "0.9"]


def _one_line_error(result, code=2) -> str:
    assert result.exit_code == code, result.output
    # Progress bars of the verification go to stderr too; the error is the one last line.
    lines = [line for line in result.stderr.strip().splitlines() if "it/s]" not in line]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and "Internal error" not in result.output
    return lines[0]


def _hashes(*roots: Path) -> Dict[str, str]:
    """sha256 of every file under `roots` (and the link target of every symlink)."""
    found = {}
    for root in roots:
        paths = [root] if not root.is_dir() or root.is_symlink() else sorted(root.rglob("*"))
        for path in paths:
            if path.is_symlink():
                found[str(path)] = "link->" + os.readlink(path)
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.exists() and not path.is_dir():
                found[str(path)] = f"mode {stat.S_IFMT(path.stat().st_mode):o}"
    return found


def _tiny_digits_model() -> tf.keras.Model:
    """Binary-weight conv + BN + binary conv + BN + softmax dense for 8x8x1 digits (~95% test
    accuracy after 5 epochs, 3 s)."""
    import larq as lq

    binary = dict(kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False,
                  padding="same")
    inputs = tf.keras.Input((8, 8, 1))
    x = lq.layers.QuantConv2D(16, 3, name="conv1", **binary)(inputs)
    x = tf.keras.layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = lq.layers.QuantConv2D(32, 3, pad_values=1.0, input_quantizer="ste_sign", name="conv2",
                              **binary)(x)
    x = tf.keras.layers.BatchNormalization(momentum=0.9, name="bn2")(x)
    x = tf.keras.layers.Flatten(name="flatten")(x)
    outputs = tf.keras.layers.Dense(10, activation="softmax", name="head")(x)
    return tf.keras.Model(inputs, outputs, name="tiny_digits")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run folder (model.keras + config.json) of a tiny model trained 5 epochs on digits."""
    from bnn_keras.training import data
    from convert.samples import run_test_split

    splits = data.load_digits()
    config = {
        "model": "tiny", "dataset": "digits", "input_shape": [8, 8, 1], "num_classes": 10,
        "class_names": splits.class_names, "normalization": splits.normalization.to_dict(),
        "pixel_max": 16.0,
    }
    x, y = run_test_split(config, split="train")
    tf.keras.utils.set_random_seed(0)
    model = _tiny_digits_model()
    model.compile(tf.keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=5, batch_size=64, verbose=0)
    run = tmp_path_factory.mktemp("faults") / "run"
    run.mkdir()
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps(config, indent=2))
    (run / "metrics.json").write_text(json.dumps({"test_accuracy": 0.5}))
    return run


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A private copy of the run folder."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def tflite(trained_run, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    result = invoke(["convert", trained_run, "-o", path, *FAST])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def no_conversion(monkeypatch):
    """Fails the test if the (long) conversion starts: refusals must come before it."""
    import convert.workflow

    def refuse(*args, **kwargs):
        raise AssertionError("the conversion started although an output was refused")

    monkeypatch.setattr(convert.workflow, "convert_to_flatbuffer", refuse)


# ---------------------------------------------------------------------------------------------
# Outputs never destroy inputs


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_convert_onto_its_own_input_is_refused(run, overwrite, no_conversion):
    before = _hashes(run)
    for target in (run / "model.keras", run / "config.json"):
        line = _one_line_error(invoke(["convert", run, "-o", target, *overwrite]))
        assert line == (f"Error: --output {target} would overwrite {target}, which this command "
                        "reads; choose another path.")
    # The model file of a run protects its run folder too.
    line = _one_line_error(invoke(["convert", run / "model.keras", "-o", run / "metrics.json",
                                   *overwrite]))
    assert "would overwrite" in line and "metrics.json" in line
    assert _hashes(run) == before


def test_convert_through_a_symlink_is_refused(run, tmp_path, no_conversion):
    target = tmp_path / "deployed.tflite"
    target.write_bytes(b"an earlier model")
    link = tmp_path / "current.tflite"
    link.symlink_to(target)
    to_model = tmp_path / "model-link.tflite"
    to_model.symlink_to(run / "model.keras")
    before = _hashes(run, target, link, to_model)
    for path in (link, to_model):
        line = _one_line_error(invoke(["convert", run, "-o", path, "--overwrite"]))
        assert line.startswith(f"Error: --output {path} is a symbolic link; bnn does not "
                               "replace a link with a file")
    assert _hashes(run, target, link, to_model) == before
    assert link.is_symlink() and to_model.is_symlink()


def test_convert_to_a_device_fifo_or_folder_is_refused(run, tmp_path, no_conversion):
    fifo = tmp_path / "pipe.tflite"
    os.mkfifo(fifo)
    targets = [fifo, tmp_path]
    if os.geteuid() == 0:  # a /dev/null of our own: replacing it would harm nothing
        null = tmp_path / "null"
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        targets.append(null)
    devnull = tmp_path / "stdout.tflite"
    devnull.symlink_to("/dev/null")
    before = _hashes(run, tmp_path)
    for target in targets:
        line = _one_line_error(invoke(["convert", run, "-o", target, "--overwrite"]))
        kind = "a folder" if target.is_dir() else "not a regular file"
        assert line == (f"Error: --output {target} is {kind}; give the path of a new or "
                        "existing file.")
    assert "symbolic link" in _one_line_error(invoke(["convert", run, "-o", devnull]))
    assert _hashes(run, tmp_path) == before
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_existing_output_needs_overwrite(run, tmp_path):
    out = tmp_path / "model.tflite"
    out.write_bytes(b"the model deployed last week")
    before = _hashes(run, out)
    line = _one_line_error(invoke(["convert", run, "-o", out, *FAST]))
    assert line == (f"Error: --output {out} already exists; pass --overwrite to replace it, or "
                    "choose another path.")
    # The default output too: a second `bnn convert RUN` does not silently replace the first.
    (run / "model.tflite").write_bytes(b"first conversion")
    line = _one_line_error(invoke(["convert", run, *FAST]))
    assert f"{run / 'model.tflite'} already exists; pass --overwrite" in line
    assert _hashes(run, out) == {**before, str(run / "model.tflite"): hashlib.sha256(
        b"first conversion").hexdigest()}
    result = invoke(["convert", run, "-o", out, "--overwrite", *FAST])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[4:8] == b"TFL3"
    assert not list(tmp_path.glob(".*partial*"))


def _mount_tmpfs(folder: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_read_only_file_system_is_refused_before_converting(run, tmp_path, no_conversion):
    mnt = tmp_path / "ro"
    _mount_tmpfs(mnt, "64k")
    try:
        (mnt / "old.tflite").write_bytes(b"kept")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        before = _hashes(run, mnt)
        line = _one_line_error(invoke(["convert", run, "-o", mnt / "new.tflite"]))
        assert line == (f"Error: Cannot write --output into {mnt}: read-only file system; "
                        "choose a writable folder.")
        line = _one_line_error(invoke(["convert", run, "-o", mnt / "old.tflite",
                                       "--overwrite"]))
        assert "read-only file system" in line
        line = _one_line_error(invoke(["convert", run, "-o", tmp_path / "m.tflite",
                                       "--bundle", mnt / "pi"]))
        assert line == (f"Error: Cannot write --bundle into {mnt}: read-only file system; "
                        "choose a writable folder.")
        assert _hashes(run, mnt) == before
        assert not (tmp_path / "m.tflite").exists()
    finally:
        _unmount(mnt)


def test_full_file_system_is_refused_early_and_a_failed_write_keeps_the_old_file(
        run, tmp_path, monkeypatch):
    from bnn_keras import files

    mnt = tmp_path / "full"
    _mount_tmpfs(mnt, "64k")
    try:
        out = mnt / "model.tflite"
        out.write_bytes(b"the previous model")
        # Leave one 4 KiB page: less than the flatbuffer (~90 KiB), enough for the write probe.
        (mnt / "filler").write_bytes(b"\0" * (64 - 4 - 4) * 1024)
        before = _hashes(run, mnt)
        line = _one_line_error(invoke(["convert", run, "-o", out, "--overwrite", *FAST]))
        assert line.startswith(f"Error: Not enough free space for the .tflite in {mnt}: ")
        assert "MiB needed; free some space or choose another folder." in line
        assert _hashes(run, mnt) == before
        # Were the estimate wrong, the write itself fails: one line, and the old file stays.
        monkeypatch.setattr(files, "check_free_space", lambda *args, **kwargs: None)
        line = _one_line_error(invoke(["convert", run, "-o", out, "--overwrite", *FAST]))
        assert line == (f"Error: Could not write --output {out}: No space left on device; "
                        "nothing was replaced. Free some space or choose a writable folder.")
        assert _hashes(run, mnt) == before
        assert sorted(p.name for p in mnt.iterdir()) == ["filler", "model.tflite"]
    finally:
        _unmount(mnt)


def test_refused_bundle_leaves_output_and_folder_as_they_were(run, tmp_path, no_conversion):
    out = tmp_path / "good.tflite"
    out.write_bytes(b"the good model")
    mine = tmp_path / "b"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    before = _hashes(run, tmp_path)
    # The case: `-o good.tflite --bundle b` with both there. Refused at once.
    line = _one_line_error(invoke(["convert", run, "-o", out, "--bundle", mine]))
    assert line == (f"Error: --output {out} already exists; pass --overwrite to replace it, or "
                    "choose another path.")
    line = _one_line_error(invoke(["convert", run, "-o", tmp_path / "x.tflite", "--bundle",
                                   mine]))
    assert line == (f"Error: --bundle {mine} already exists; pass --overwrite to replace it, "
                    "or choose another folder.")
    # --overwrite replaces a bundle, never a folder of other files.
    line = _one_line_error(invoke(["convert", run, "-o", out, "--overwrite", "--bundle", mine]))
    assert line == (f"Error: --bundle {mine} is not an empty folder or a bnn bundle; "
                    "--overwrite replaces only a bnn bundle: choose another folder.")
    # A bundle folder holding the run (or the output) would delete it when replaced.
    line = _one_line_error(invoke(["convert", run, "-o", tmp_path / "x.tflite", "--overwrite",
                                   "--bundle", tmp_path]))
    assert "would replace" in line
    line = _one_line_error(invoke(["convert", run, "-o", tmp_path / "new" / "m.tflite",
                                   "--bundle", tmp_path / "new"]))
    assert line == (f"Error: --bundle {tmp_path / 'new'} would replace "
                    f"{tmp_path / 'new' / 'm.tflite'}, which this command reads or writes; "
                    "choose another folder.")
    assert _hashes(run, tmp_path) == before


def _add_user_files(bundle: Path) -> Dict[str, str]:
    """The user's notes and what build.sh leaves on the device; returns their hashes."""
    (bundle / "notes.txt").write_text("deployed to the kitchen pi")
    (bundle / "build").mkdir()
    (bundle / "build" / "bnn_runner").write_bytes(b"\x7fELF built on the pi in 40 minutes")
    (bundle / "build" / "bnn_runner").chmod(0o755)
    (bundle / "build" / "current").symlink_to("bnn_runner")
    return _hashes(bundle / "notes.txt", bundle / "build")


def test_bundle_that_fails_its_self_check_replaces_nothing(run, tmp_path, monkeypatch):
    import convert.bundle
    from bnn_keras.errors import BnnError

    out = tmp_path / "good.tflite"
    result = invoke(["convert", run, "-o", out, "--bundle", tmp_path / "pi", *FAST])
    assert result.exit_code == 0, result.output
    assert invoke(["check-bundle", tmp_path / "pi"]).exit_code == 0
    users = _add_user_files(tmp_path / "pi")
    before = _hashes(run, tmp_path)

    def failing_check(folder, **kwargs):
        raise BnnError(f"Bundle self-check failed for {folder}: simulated.")

    monkeypatch.setattr(convert.bundle, "check_bundle", failing_check)
    line = _one_line_error(invoke(["convert", run, "-o", out, "--bundle", tmp_path / "pi",
                                   "--overwrite", *FAST]))
    assert line == f"Error: Bundle self-check failed for {tmp_path / 'pi'}: simulated."
    assert _hashes(run, tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # With a passing check, --overwrite replaces the earlier bundle and the output.
    monkeypatch.undo()
    (run / "config.json").write_text(json.dumps({
        **json.loads((run / "config.json").read_text()), "class_names": list("abcdefghij")}))
    result = invoke(["convert", run, "-o", out, "--bundle", tmp_path / "pi", "--overwrite", *FAST])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pi" / "labels.txt").read_text() == "".join(f"{c}\n" for c in "abcdefghij")
    assert (tmp_path / "pi" / "model.tflite").read_bytes() == out.read_bytes()
    assert hashlib.sha256(out.read_bytes()).hexdigest() != before[str(out)]  # new class names
    # ... and keeps the user's notes and the runner built on the device, byte-identical.
    assert _hashes(tmp_path / "pi" / "notes.txt", tmp_path / "pi" / "build") == users
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    result = invoke(["check-bundle", tmp_path / "pi"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"{tmp_path / 'pi'}: not bnn's, not checked: notes.txt"


def _old_bundle(tmp_path) -> Path:
    """A copy of a bundle bnn 0.2.0 wrote (format 1: no pi.sh, no manifest.json)."""
    from tests.conftest import FIXTURES

    return Path(shutil.copytree(FIXTURES / "bundles" / "format1", tmp_path / "pi"))


def test_overwrite_refuses_to_replace_what_bnn_did_not_write(run, tmp_path, no_conversion):
    out = tmp_path / "m.tflite"
    pi = _old_bundle(tmp_path)
    _add_user_files(pi)
    # A file of the user's where the new bundle writes one: bnn 0.2.0 wrote no pi.sh.
    (pi / "pi.sh").write_text("# my helpers\n")
    before = _hashes(run, tmp_path)
    line = _one_line_error(invoke(["convert", run, "-o", out, "--bundle", pi, "--overwrite"]))
    assert line == (f"Error: --bundle {pi} holds pi.sh, which bnn did not write and a new bundle "
                    "would replace; move it out of the folder (or choose another folder), then "
                    "run again.")
    assert _hashes(run, tmp_path) == before
    # One of bnn's files, edited on the device: the runner's tolerance.
    (pi / "pi.sh").unlink()
    args = pi / "runner_args.txt"
    args.write_text(args.read_text().replace("--atol=0.001", "--atol=0.5"))
    before = _hashes(run, tmp_path)
    line = _one_line_error(invoke(["convert", run, "-o", out, "--bundle", pi, "--overwrite"]))
    assert line == (f"Error: --bundle {pi}: runner_args.txt was changed after bnn wrote it, and a "
                    "new bundle would replace it; move it out of the folder (or choose another "
                    "folder), then run again.")
    assert _hashes(run, tmp_path) == before
    assert not out.exists()


def test_failed_verification_keeps_an_existing_unverified_file(run, tmp_path, monkeypatch):
    import convert.workflow

    real = convert.workflow.verify_flatbuffer

    def disagreeing(*args, **kwargs):
        verification = real(*args, **kwargs)
        verification.top1_agreement = 0.5
        return verification

    monkeypatch.setattr(convert.workflow, "verify_flatbuffer", disagreeing)
    out = tmp_path / "m.tflite"
    kept = tmp_path / "m.tflite.unverified"
    line = _one_line_error(invoke(["convert", run, "-o", out, *FAST]))
    assert line.endswith(f"(--min-agreement 90.00%); kept it as {kept} for inspection.")
    assert kept.read_bytes()[4:8] == b"TFL3" and not out.exists()
    kept.write_bytes(b"an earlier failure, being looked at")
    before = _hashes(run, tmp_path)
    line = _one_line_error(invoke(["convert", run, "-o", out, *FAST]))
    assert line.endswith(f"; it was not kept, since {kept} already exists (pass --overwrite to "
                         "replace it).")
    assert _hashes(run, tmp_path) == before
    kept.unlink()
    kept.symlink_to(run / "model.keras")  # the sibling is checked before converting, too
    line = _one_line_error(invoke(["convert", run, "-o", out, "--overwrite", *FAST]))
    assert line.startswith(f"Error: --output {kept} is a symbolic link")


# ---------------------------------------------------------------------------------------------
# No silent wrong results


def test_class_names_must_match_the_outputs(run, tmp_path, no_conversion):
    config = json.loads((run / "config.json").read_text())
    config["class_names"] = ["cat", "dog", "bird"]
    (run / "config.json").write_text(json.dumps(config))
    line = _one_line_error(invoke(["convert", run, "-o", tmp_path / "m.tflite"]))
    assert line == (f"Error: {run / 'config.json'} names 3 classes but the model has 10 "
                    "outputs; give one class name per output.")
    line = _one_line_error(invoke(["convert", run / "model.keras", "-o", tmp_path / "m.tflite",
                                   "--class-names", "cat,dog,bird", "--mean", "0",
                                   "--std", "1"]))
    assert line == ("Error: --class-names names 3 classes but the model has 10 outputs; give "
                    "one class name per output.")
    assert not (tmp_path / "m.tflite").exists()


def test_model_file_needs_its_preprocessing_or_no_metadata(trained_run, tmp_path):
    model_file = tmp_path / "tiny.keras"
    shutil.copyfile(trained_run / "model.keras", model_file)
    line = _one_line_error(invoke(["convert", model_file, "-o", tmp_path / "m.tflite"]))
    assert line == (f"Error: {model_file} is a model file without a run folder, so nothing "
                    "says how to feed and read it: pass --class-names, --mean, --std (and "
                    "--pixel-max, --dataset if they apply), or --no-metadata for a plain .tflite "
                    "that `bnn evaluate` and `bnn predict` cannot use.")
    assert not (tmp_path / "m.tflite").exists()
    # Options apply to model files only: a run folder records its own.
    line = _one_line_error(invoke(["convert", trained_run, "--mean", "0", "-o",
                                   tmp_path / "m.tflite"]))
    assert line == (f"Error: --mean: for a model file only; the run folder {trained_run} "
                    "records its preprocessing in config.json.")

    plain = tmp_path / "plain.tflite"
    assert invoke(["convert", model_file, "-o", plain, "--no-metadata", *FAST]).exit_code == 0
    line = _one_line_error(invoke(["evaluate", plain, "--dataset", "digits"]))
    assert "carries no training preprocessing" in line


def test_model_file_with_its_preprocessing_evaluates_like_keras(trained_run, tmp_path):
    from convert.samples import run_test_split

    config = json.loads((trained_run / "config.json").read_text())
    names = tmp_path / "names.txt"
    names.write_text("".join(f"{n}\n" for n in DIGIT_NAMES))
    norm = config["normalization"]
    out = tmp_path / "m.tflite"
    result = invoke(["convert", trained_run / "model.keras", "-o", out, "--class-names", names,
                     "--mean", ",".join(map(str, norm["mean"])), "--std",
                     ",".join(map(str, norm["std"])), "--dataset", "digits", *FAST])
    assert result.exit_code == 0, result.output
    assert "16 digits test images" in result.output  # verified on real images
    result = invoke(["evaluate", out])
    assert result.exit_code == 0, result.output
    accuracy = float(result.output.split("test accuracy ")[1].split()[0])
    model = tf.keras.models.load_model(trained_run / "model.keras")
    x, y = run_test_split(config)
    keras_accuracy = float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))
    assert keras_accuracy > 0.8  # the model learned, so agreeing with it means something
    assert abs(accuracy - keras_accuracy) <= 2 / len(y)


def test_evaluate_on_a_data_set_with_other_classes_is_refused(trained_run, tmp_path):
    from tests.conftest import tiny_lce_model

    named = tmp_path / "named.tflite"
    words = "zero,one,two,three,four,five,six,seven,eight,nine"
    result = invoke(["convert", trained_run / "model.keras", "-o", named, "--class-names",
                     words, "--mean", "5", "--std", "6", "--dataset", "digits", *FAST])
    assert result.exit_code == 0, result.output
    line = _one_line_error(invoke(["evaluate", named]))
    assert line == ("Error: The classes of digits differ from the model's (0: 'zero' vs '0', "
                    "1: 'one' vs '1', 2: 'two' vs '2' and 7 more); evaluate it on the data set "
                    "it was trained for.")
    four = tmp_path / "four.keras"
    tiny_lce_model().save(four)
    out = tmp_path / "four.tflite"
    result = invoke(["convert", four, "-o", out, "--class-names", "a,b,c,d", "--mean", "0",
                     "--std", "1", "--min-agreement", "0", "--samples", "4"])
    assert result.exit_code == 0, result.output
    line = _one_line_error(invoke(["evaluate", out, "--dataset", "digits"]))
    assert line == ("Error: The model has 4 classes but digits has 10; evaluate it on the data "
                    "set it was trained for.")


def test_benchmark_labels_float_and_binary_models(tflite, tmp_path):
    float_model = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), tf.keras.layers.Flatten(),
                                       tf.keras.layers.Dense(10)])
    float_file = tmp_path / "float.tflite"
    float_file.write_bytes(tf.lite.TFLiteConverter.from_keras_model(float_model).convert())
    for path, label in ((float_file, "float"), (tflite, "binary (LCE)")):
        result = invoke(["benchmark", path, "--runs", "2", "--warmup", "0"])
        assert result.exit_code == 0, result.output
        assert f"\n{label}: 2 runs, 1 thread(s): median" in result.output, result.output


def test_threads_are_bounded_by_the_cpus(tflite, tmp_path):
    from convert.runtime import available_cpus

    cpus = available_cpus()
    png = tmp_path / "x.png"
    png.write_bytes(tf.io.encode_png(np.zeros((8, 8, 1), np.uint8)).numpy())
    for command in (["benchmark", tflite], ["evaluate", tflite], ["predict", tflite, png]):
        for threads in ("100000", "0"):
            line = _one_line_error(invoke([*command, "--threads", threads]))
            assert line == (f"Error: --threads must be between 1 and {cpus} (the CPUs available "
                            f"here), got {threads}.")
    result = invoke(["predict", tflite, png, "--threads", str(cpus)])
    assert result.exit_code == 0, result.output


def _weight_buffer_offset(data: bytes) -> int:
    """Offset of the middle of the largest constant buffer (a weight tensor) in the file."""
    from convert.flatbuffer import read_model

    model = read_model(data)
    weights = [bytes(bytearray(b.data)) for b in model.buffers if b.data is not None]
    largest = max((w for w in weights if not w.startswith(b"{")), key=len)  # not the metadata
    at = data.find(largest)
    assert at > 64 and data.find(largest, at + 1) < 0
    return at + len(largest) // 2


def test_bit_flipped_file_is_reported(tflite, tmp_path):
    from convert.flatbuffer import read_model
    from convert.metadata import check_content_digest, embed_metadata, read_metadata

    data = tflite.read_bytes()
    assert check_content_digest(data) is True
    flipped = bytearray(data)
    flipped[_weight_buffer_offset(data)] ^= 0x10
    read_model(bytes(flipped))  # still a valid flatbuffer: the schema cannot see it
    bad = tmp_path / "flipped.tflite"
    bad.write_bytes(bytes(flipped))
    png = tmp_path / "x.png"
    png.write_bytes(tf.io.encode_png(np.zeros((8, 8, 1), np.uint8)).numpy())
    for command in (["benchmark", bad, "--runs", "1"], ["evaluate", bad, "--limit", "4"],
                    ["predict", bad, png]):
        line = _one_line_error(invoke(command))
        assert line.startswith(f"Error: {bad} is damaged: its content hash does not match "
                               "(sha256 ")
        assert line.endswith("); convert the model again.")
    # Re-embedding metadata restamps the hash; the metadata read back has no digest in it.
    again = embed_metadata(data, {**read_metadata(data), "dataset": "other"})
    assert check_content_digest(again) is True
    assert read_metadata(again)["dataset"] == "other" and "content_sha256" not in read_metadata(again)


def test_bit_flipped_bundle_model_is_reported(trained_run, tmp_path):
    out = tmp_path / "m.tflite"
    result = invoke(["convert", trained_run, "-o", out, "--bundle", tmp_path / "pi", *FAST])
    assert result.exit_code == 0, result.output
    model = tmp_path / "pi" / "model.tflite"
    assert model.read_bytes() == out.read_bytes()
    data = bytearray(model.read_bytes())
    data[_weight_buffer_offset(bytes(data))] ^= 0x01
    model.write_bytes(bytes(data))
    line = _one_line_error(invoke(["check-bundle", tmp_path / "pi"]))
    assert line.startswith(f"Error: {model} is damaged: its content hash does not match")


# ---------------------------------------------------------------------------------------------
# A run folder that another process trains into (its lock held, as `bnn train` holds it)


def test_converting_a_run_being_trained_warns_and_writes_only_outside_it(run, tmp_path):
    """The issue: `bnn convert RUN` while another process trains into RUN converted the old
    model without a word. Its model.keras is complete (written atomically), so a .tflite
    elsewhere is made with a warning; the run folder belongs to the training process, so
    nothing is written into it."""
    from bnn_keras.training.run_lock import RunFolderLock

    out = tmp_path / "m.tflite"
    with RunFolderLock(run, create=False):
        before = _hashes(run)
        result = invoke(["convert", run, "-o", out, *FAST])
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
        assert warnings == [
            f"Warning: Run folder {run} is in use by another bnn process (PID {os.getpid()}), "
            "which is training into it: converting its model.keras as it is now, which that "
            "run will replace when it ends."]
        assert out.read_bytes()[4:8] == b"TFL3"
        for args, where in (([], f"--output {run / 'model.tflite'}"),
                            (["-o", tmp_path / "b.tflite", "--bundle", run / "pi"],
                             f"--bundle {run / 'pi'}")):
            line = _one_line_error(invoke(["convert", run, *args, *FAST]))
            assert line == (
                f"Error: Run folder {run} is in use by another bnn process (PID {os.getpid()}), "
                f"which is training into it: {where} would be written into the folder that "
                "process owns, beside a model.keras it will replace; wait for it to end, or "
                "give an output outside the run folder.")
        assert _hashes(run) == before
    assert not (tmp_path / "b.tflite").exists()
    # Once the training has ended, the default output is written without a word.
    result = invoke(["convert", run, *FAST])
    assert result.exit_code == 0 and "Warning" not in result.output, result.output


def test_converting_a_run_whose_first_training_has_not_ended_is_refused(run, tmp_path,
                                                                         no_conversion):
    from bnn_keras.training.run_lock import RunFolderLock

    (run / "model.keras").unlink()
    with RunFolderLock(run, create=False):
        before = _hashes(run, tmp_path)
        line = _one_line_error(invoke(["convert", run, "-o", tmp_path / "m.tflite"]))
        assert _hashes(run, tmp_path) == before
    assert line == (f"Error: Run folder {run} is in use by another bnn process (PID "
                    f"{os.getpid()}), which is training into it and has not written its "
                    "model.keras yet; wait for it to end.")


# ---------------------------------------------------------------------------------------------
# Free space: estimated from the flatbuffer LCE will write, not from the Keras model


def _mostly_binary_run(folder: Path) -> Path:
    """A run folder of an untrained 8x8 digits model of ~740 K weights, nearly all binary:
    model.keras ~3 MB, its flatbuffer ~0.1 MB (1 bit per binary weight)."""
    import larq as lq
    from bnn_keras.training import data

    binary = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", use_bias=False,
                  padding="same", pad_values=1.0)
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((8, 8, 1))
    x = lq.layers.QuantConv2D(64, 3, kernel_quantizer="ste_sign", use_bias=False,
                              padding="same", name="conv1")(inputs)
    x = tf.keras.layers.BatchNormalization(name="bn1")(x)
    x = lq.layers.QuantConv2D(256, 3, name="conv2", **binary)(x)
    x = tf.keras.layers.BatchNormalization(name="bn2")(x)
    x = lq.layers.QuantConv2D(256, 3, name="conv3", **binary)(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = tf.keras.layers.Dense(10, activation="softmax", name="head")(x)
    splits = data.load_digits()
    folder.mkdir()
    tf.keras.Model(inputs, outputs).save(folder / "model.keras")
    (folder / "config.json").write_text(json.dumps({
        "model": "mostly-binary", "dataset": "digits", "input_shape": [8, 8, 1],
        "num_classes": 10, "class_names": splits.class_names,
        "normalization": splits.normalization.to_dict(), "pixel_max": 16.0}))
    return folder


def test_free_space_is_estimated_from_the_flatbuffer_not_the_keras_model(tmp_path):
    """The issue: a 65 KB .tflite was refused with 680 KB free, its size estimated from the
    Keras model's (float32 latent weights). Here a ~0.1 MB flatbuffer of a ~3 MB model.keras
    goes onto a 1 MiB file system."""
    from convert.loading import load_trained_model
    from convert.metadata import run_metadata
    from convert.workflow import estimated_tflite_size

    run = _mostly_binary_run(tmp_path / "run")
    assert (run / "model.keras").stat().st_size > 2_500_000
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "1m")
    try:
        out = mnt / "model.tflite"
        result = invoke(["convert", run, "-o", out, "--samples", "16", "--min-agreement", "0"])
        assert result.exit_code == 0, result.output
        actual = out.stat().st_size
    finally:
        _unmount(mnt)
    loaded = load_trained_model(str(run))
    estimate = estimated_tflite_size(
        loaded.model, run_metadata(loaded.run.model_input, model=loaded.run.model))
    # Never below what is written, and not far above it (the prediction is within 5%).
    assert actual <= estimate <= 1.5 * actual, (actual, estimate)
    assert estimate < 200_000
