"""The `bnn` CLI: exit codes, one-line errors, no files left behind, reports."""

import json
import re

import pytest

from tests.conftest import DIGITS_SHAPE, invoke


def _one_line_error(result, code=2):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_version_and_help_list_the_commands():
    result = invoke(["--version"])
    from importlib import metadata

    # One source of truth: the version setup.cfg gives, as installed.
    assert result.exit_code == 0
    assert result.output.strip() == f"bnn, version {metadata.version('bnn')}"
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("train", "convert", "benchmark", "evaluate", "predict", "inspect", "models",
                    "summary", "check-bundle"):
        assert re.search(rf"^\s+{command}\s", result.output, re.M), command


def test_train_unknown_model_is_one_line_and_writes_nothing(tmp_path):
    result = invoke(["train", "no-such-model", "--dataset", "digits", "--output", tmp_path / "run"])
    line = _one_line_error(result)
    assert line.startswith("Error: Unknown model 'no-such-model'")
    assert not (tmp_path / "run").exists()


def test_train_close_match_is_suggested():
    line = _one_line_error(invoke(["train", "binary-densenet82"]))
    assert "did you mean binary-densenet28" in line


def test_train_bad_option_is_refused_before_any_work(tmp_path):
    line = _one_line_error(invoke(["train", "binary-densenet28", "--epochs", "0",
                                   "--output", tmp_path / "run"]))
    assert line == "Error: Expected --epochs >= 1, got 0."  # the library says `epochs`
    assert not (tmp_path / "run").exists()


SMALL_RESNET = ["--model-option", "stage_filters=[8,8,16,16]", "--model-option", "stem-relu=false"]


@pytest.fixture(scope="module")
def _small_resnet_run(tmp_path_factory):
    """`bnn train binary-resnet-e18 SMALL_RESNET` on digits for one step, validating every 3rd
    epoch, at the default verbosity (as a user would leave it): its folder and click Result.
    The progress-output and the model-options tests read this one run (each trained its own,
    ~3 s each)."""
    run_dir = tmp_path_factory.mktemp("resnet") / "run"
    result = invoke(["train", "binary-resnet-e18", *SMALL_RESNET, "--dataset", "digits",
                     "--epochs", "1", "--steps-per-epoch", "1", "--precision", "float32",
                     "--validation-freq", "3", "--output", run_dir])
    return run_dir, result


@pytest.fixture
def small_resnet_run(_small_resnet_run, tmp_path):
    """A private copy of the module's `_small_resnet_run` folder, and its click Result."""
    from tests.artefacts import copy_of

    run_dir, result = _small_resnet_run
    return copy_of(run_dir, tmp_path / "run"), result


def test_output_to_a_file_or_pipe_has_no_progress_frames(_small_resnet_run):
    """Keras' progress bar (and tqdm) redraw with carriage returns: only on a terminal. Into a
    log file or pipe, `bnn train` writes one line per epoch unless --verbose says otherwise."""
    import os

    import cli

    reader, writer = os.pipe()
    leader, follower = os.openpty()
    try:
        with os.fdopen(os.dup(writer), "w") as pipe, os.fdopen(os.dup(follower), "w") as tty:
            assert not cli._on_terminal(pipe) and cli._on_terminal(tty)
    finally:
        for fd in (reader, writer, leader, follower):
            os.close(fd)
    _, result = _small_resnet_run  # trained without --verbose
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and "\x08" not in result.output
    assert re.search(r"^1/1 - .*val_accuracy: [\d.]+", result.output, re.M)  # verbose 2


def test_train_model_options_are_used_and_recorded_for_resume(small_resnet_run, monkeypatch):
    import models
    from bnn_keras import BnnError, training

    run_dir, result = small_resnet_run
    assert result.exit_code == 0, result.output
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model_options"] == {"stage_filters": [8, 8, 16, 16], "stem_relu": False}
    assert config["validation_freq"] == 3
    with open(run_dir / "history.csv") as f:  # the last epoch is always validated
        assert "val_accuracy" in f.readline().strip().split(",")
    expected = models.create_model("binary-resnet-e18", input_shape=(16, 16, 1), num_classes=10,
                                   stage_filters=[8, 8, 16, 16], stem_relu=False)
    assert config["params"] == expected.count_params()
    assert config["params"] != models.create_model(
        "binary-resnet-e18", input_shape=(16, 16, 1), num_classes=10).count_params()

    # --resume rebuilds the network from the recorded options (the registry model of the
    # record the CLI read: build_model None).
    from bnn_keras.training.run import registry_model

    rebuilt = {}

    def resume(run, build, record=None, **kwargs):
        assert build is None
        rebuilt["params"] = registry_model(record.config, (16, 16, 1), 10)[0].count_params()
        raise BnnError("stop here")

    monkeypatch.setattr(training, "resume_training", resume)
    monkeypatch.setattr(training, "read_status", lambda run: {"epochs_completed": 0})
    _one_line_error(invoke(["train", "--resume", run_dir]))
    assert rebuilt["params"] == config["params"]


def test_train_bad_model_option_is_one_line(tmp_path):
    line = _one_line_error(invoke(["train", "binary-resnet-e18", "--model-option", "width=3",
                                   "--dataset", "digits", "--output", tmp_path / "run"]))
    # The valid keys, with the defaults binary-resnet-e18 builds with (its own, not the
    # family builder's: SteSign's clip value 1.25, BinaryResNetE's).
    assert line == (
        "Error: binary-resnet-e18 has no option 'width'; its options (with their defaults): "
        "stage_filters=(64, 128, 256, 512), input_quantizer=SteSign(clip_value=1.25), "
        "kernel_quantizer=SteSign(clip_value=1.25), kernel_constraint=WeightClip("
        "clip_value=1.25), bn_momentum=0.9, bn_epsilon=1e-05, stem_initializer=\"he_normal\", "
        "stem_strides=1, stem_relu=True, stem_extra_bn=True, head_relu=True, "
        "variant=\"bnn\".")
    assert not (tmp_path / "run").exists()
    result = invoke(["train", "binary-resnet-e18", "--model-option", "width"])
    assert result.exit_code == 2 and "expected KEY=VALUE, got 'width'" in result.output


def test_convert_missing_file(tmp_path):
    line = _one_line_error(invoke(["convert", tmp_path / "missing.keras", "-o", tmp_path / "m.tflite"]))
    assert line == f"Error: No such model file or run folder: {tmp_path / 'missing.keras'}."
    assert list(tmp_path.iterdir()) == []


def test_convert_file_that_is_not_a_model(tmp_path):
    bogus = tmp_path / "model.keras"
    bogus.write_bytes(b"\x00\x01 definitely not a zip archive")
    line = _one_line_error(invoke(["convert", bogus, "-o", tmp_path / "m.tflite"]))
    assert line.startswith(f"Error: Could not load {bogus} as a Keras model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_benchmark_file_that_is_not_a_flatbuffer(tmp_path):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"TFL2" * 64)
    line = _one_line_error(invoke(["benchmark", bogus]))
    assert line == f"Error: {bogus} is not a TFLite flatbuffer (no 'TFL3' identifier); " \
                   "pass a .tflite file written by `bnn convert`."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_convert_reports_size_ops_agreement_and_bundle(digits_convert):
    path, result = digits_convert
    size = path.stat().st_size
    assert re.search(rf"^file\s+{re.escape(str(path))}$", result.stdout, re.M), result.stdout
    assert re.search(rf"^size\s+{size:,} bytes$", result.stdout, re.M)
    assert re.search(r"^LceBconv2d / binary convs\s+23 / 23$", result.stdout, re.M)
    assert re.search(r"^ops\s+.*LceBconv2d 23, LceQuantize 23", result.stdout, re.M)
    assert re.search(r"^missed fusions\s+none$", result.stdout, re.M)
    match = re.search(r"64 digits test images: max \|diff\| ([\d.e+-]+) \(median input "
                      r"([\d.e+-]+)\), top-1 agreement ([\d.]+)%", result.output)
    assert match, result.output
    max_diff, median_diff, agreement = map(float, match.groups())
    assert agreement >= 99.0
    # Same weights, float32 on both sides: only summation order differs, so the typical input
    # agrees to float rounding. An input whose pre-activation lands within rounding of zero
    # binarizes to the other sign downstream: measured 0.014 on 2 of 64 inputs, where Keras
    # itself moves by 0.026 when its input is scaled by 1 + 1e-6 noise.
    assert median_diff < 1e-5
    assert max_diff < 0.1
    assert re.search(r"^bundle\s+\S+pi \(self-check max", result.stdout, re.M)


def test_check_bundle_passes_on_the_written_bundle(digits_tflite):
    result = invoke(["check-bundle", digits_tflite.parent / "pi"])
    assert result.exit_code == 0, result.output
    # The top-1 class by its label (digits' labels are the digits: the label alone).
    assert re.search(r": OK: max \|diff\| [\d.e+-]+ \(tolerance [\d.e+-]+\), top-1 (\d) "
                     r"\(expected \1\)", result.output)


def test_inspect_describes_a_tflite_file(digits_tflite, tmp_path):
    """`bnn inspect FILE.tflite`: its size, operators, I/O and bnn metadata, from the file."""
    from convert.flatbuffer import Flatbuffer

    flatbuffer = Flatbuffer.from_file(digits_tflite)
    result = invoke(["inspect", digits_tflite])
    assert result.exit_code == 0, result.output
    rows = dict(re.split(r"  +", line, maxsplit=1) for line in result.stdout.splitlines())
    assert rows["size"] == f"{digits_tflite.stat().st_size:,} bytes " \
        f"({digits_tflite.stat().st_size / 2**20:.2f} MiB)"
    assert rows["LceBconv2d"] == str(flatbuffer.ops["LceBconv2d"]) != "0"
    assert rows["ops"].startswith(", ".join(f"{name} {count}" for name, count in sorted(
        flatbuffer.ops.items(), key=lambda item: (-item[1], item[0])))[:40])
    height, width, channels = DIGITS_SHAPE
    assert rows["input"] == f"1x{height}x{width}x{channels} float32"
    assert rows["output"] == "10 values, float32"
    assert (rows["model"], rows["data set"], rows["pixel max"]) == (
        "binary-densenet28", "digits", "16")
    assert rows["classes"] == ", ".join(str(d) for d in range(10))
    as_json = json.loads(invoke(["inspect", digits_tflite, "--json"]).stdout)
    assert as_json["ops"] == dict(flatbuffer.ops) and as_json["metadata"] == flatbuffer.metadata
    # Renamed, it is still read as a flatbuffer (by its TFL3 identifier).
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(digits_tflite.read_bytes())
    assert invoke(["inspect", renamed]).stdout == result.stdout.replace(
        str(digits_tflite), str(renamed))


def test_evaluate_matches_keras_test_accuracy(digits_run, digits_tflite):
    result = invoke(["evaluate", digits_tflite])
    assert result.exit_code == 0, result.output
    match = re.search(r"test accuracy ([\d.]+) on 360 digits images", result.output)
    assert match, result.output
    assert abs(float(match.group(1)) - digits_run.metrics["test_accuracy"]) <= 0.005


def test_predict_labels_an_image_file_like_keras(digits_run, digits_tflite, tmp_path):
    import numpy as np
    import tensorflow as tf

    from bnn_keras.training import data

    splits = data.load_digits()
    raw, label = next(iter(splits.test.skip(7)))
    png = tmp_path / "digit.png"
    # Image files are 0..255; digits are 0..16, which predict rescales (pixel_max).
    tf.io.write_file(str(png), tf.io.encode_png(tf.cast(tf.round(raw * 255 / 16), tf.uint8)))
    result = invoke(["predict", digits_tflite, png, "--top-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    import json

    top = json.loads(result.stdout)[0]["top"]
    assert len(top) == 2 and top[0]["score"] >= top[1]["score"]
    from bnn_keras.training.precision import as_float32

    x = data.preprocess(tf.round(raw * 255 / 16) * 16 / 255, DIGITS_SHAPE[:2], splits.normalization)
    # The .tflite computes what the float32 copy of the (maybe bf16-trained) model computes.
    expected = int(np.argmax(as_float32(digits_run.model).predict(x[None], verbose=0)))
    assert top[0]["index"] == expected and top[0]["class"] == str(expected)


def test_models_lists_matching_models_with_their_statistics():
    import models

    result = invoke(["models", "binary-densenet2*", "--input-shape", "16,16,1",
                     "--num-classes", "10"])
    assert result.exit_code == 0, result.output
    stats = models.describe("binary-densenet28", input_shape=(16, 16, 1), num_classes=10)
    row = next(line for line in result.stdout.splitlines() if line.startswith("binary-densenet28"))
    assert f"{stats.total_params:,}" in row and f"{stats.binary_mac_fraction:.1%}" in row
    assert "binary-resnet" not in result.stdout
    line = _one_line_error(invoke(["models", "no-such-*"]))
    assert line == "Error: No model matches 'no-such-*'; `bnn models` lists them all."


def test_summary_and_inspect_of_a_registry_model():
    result = invoke(["summary", "binary-densenet28", "--input-shape", "16,16,1",
                     "--num-classes", "10"])
    assert result.exit_code == 0, result.output
    assert "Expected LceBconv2d ops: 23" in result.output
    result = invoke(["inspect", "binary-densenet28", "--input-shape", "16,16,1",
                     "--num-classes", "10"])
    assert result.exit_code == 0, result.output
    assert "no findings" in result.output
    result = invoke(["inspect", "dorefanet", "--input-shape", "32,32,3", "--num-classes", "10"])
    assert result.exit_code == 1
    assert "[multibit-activation]" in result.output
    line = _one_line_error(invoke(["inspect", "binary-densenet28", "--input-shape", "16x16"]))
    assert line == "Error: Expected --input-shape as H,W,C (e.g. 32,32,3), got '16x16'."


def test_interrupted_training_exits_130_with_the_resume_command(monkeypatch, tmp_path):
    from bnn_keras import training

    def interrupted(*args, **kwargs):
        raise training.TrainingInterruptedError(
            "Training interrupted after 1 complete epoch(s) of 3; continue with: "
            "bnn train --resume runs/x")

    monkeypatch.setattr(training, "train", interrupted)
    line = _one_line_error(invoke(["train", "binary-densenet28", "--dataset", "digits",
                                   "--output", tmp_path / "x"]), code=130)
    assert line.endswith("continue with: bnn train --resume runs/x")


def test_resume_of_a_finished_run_is_refused(digits_run):
    line = _one_line_error(invoke(["train", "--resume", digits_run.run_dir]))
    assert line == (f"Error: Run {digits_run.run_dir} already finished all its 2 epochs; nothing "
                    "to resume (to train it further, resume it with more epochs).")


def test_train_without_model_or_resume_is_a_usage_error():
    result = invoke(["train"])
    assert result.exit_code == 2 and "Missing MODEL (or --resume RUN_DIR)." in result.output


def test_benchmark_reports_median_and_p90(digits_tflite):
    result = invoke(["benchmark", digits_tflite, "--runs", "5", "--warmup", "1"])
    assert result.exit_code == 0, result.output
    match = re.search(r"5 runs, 1 thread\(s\): median ([\d.]+) ms, p90 ([\d.]+) ms, min ([\d.]+) ms",
                      result.output)
    assert match, result.output
    median, p90, fastest = map(float, match.groups())
    assert 0 < fastest <= median <= p90


@pytest.mark.parametrize("args, message", [
    (["--runs", "0"], "got threads=1, runs=0, warmup=5."),
    (["--threads", "0"], "--threads must be between 1 and"),
])
def test_benchmark_bad_numbers(digits_tflite, args, message):
    line = _one_line_error(invoke(["benchmark", digits_tflite, *args]))
    assert message in line


def test_internal_errors_are_one_line_with_exit_code_1(monkeypatch, tmp_path):
    import convert.workflow

    def boom(path):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(convert.workflow, "load_trained_model", boom)
    line = _one_line_error(invoke(["convert", tmp_path]), code=1)
    assert line == ("Internal error: RuntimeError: simulated bug "
                    "(rerun with --debug for the traceback)")


def test_int8_io_without_int8_is_refused(digits_run):
    line = _one_line_error(invoke(["convert", digits_run.run_dir, "--int8-io"]))
    assert line.startswith("Error: --int8-io needs --int8")


def test_train_options_are_generated_from_train_config():
    """Every TrainConfig field (and every trick) is one `bnn train` option, and every option
    but --resume/--output/--verbose/--custom-objects/--trust-model-code (how this process reads
    files, not what the run is) is a field: the CLI cannot drift from
    config.json. Library messages name the fields; `bnn train` shows each as the option the
    field generated."""
    import dataclasses

    import cli
    from bnn_keras import options, training
    from bnn_keras.training.tricks import Tricks

    params = {p.name: p for p in cli.train.params}
    fields = {f.name: f for f in dataclasses.fields(training.TrainConfig)}
    nested = {f.name: f for f in dataclasses.fields(Tricks)}
    expected = (set(fields) - {"tricks"}) | set(nested)
    assert set(params) - {"resume_dir", "run_dir", "verbose", "custom_objects",
                          "trust_model_code"} == expected
    for name, field in {**fields, **nested}.items():
        if name == "tricks" or field.metadata["cli"] == options.ARGUMENT:
            continue  # (click arguments have no help of their own; MODEL is in the docstring)
        param = params[name]
        assert param.help == field.metadata["help"]
        if field.metadata["choices"]:
            assert tuple(param.type.choices) == field.metadata["choices"]
        if field.metadata["cli"] == options.OPTION:
            assert options.flag(field) in param.opts or options.flag(field).split("/")[0] in (
                param.opts + param.secondary_opts)
            assert param.default == field.default

    # Library messages name the fields (and `train`'s run_dir); the CLI spells its options.
    import click

    spelled = {name: cli.main._spelled(_train_context(click, cli), f"`{name}`")
               for name in {**fields, **nested, "run_dir": None}}
    assert spelled == {**options.flags(training.TrainConfig), "tricks": "`tricks`",
                       "run_dir": "--output"}


def test_convert_options_are_generated_from_convert_options():
    """Every ConvertOptions field is one `bnn convert` option with the field's help, default,
    choices and spelling, and every option but --json/--custom-objects/--trust-model-code (how
    this process prints and reads files) is a field."""
    import dataclasses

    import click

    import cli
    from bnn_keras import options
    from convert.options import ConvertOptions

    params = {p.name: p for p in cli.convert.params}
    fields = {f.name: f for f in dataclasses.fields(ConvertOptions)}
    assert set(params) - {"source", "as_json", "custom_objects", "trust_model_code"} == set(fields)
    for name, field in fields.items():
        param = params[name]
        assert param.help == field.metadata["help"]
        assert options.flag(field) in param.opts and param.default == field.default
        assert param.is_flag == (field.type is bool)
        if field.metadata["choices"]:
            assert tuple(param.type.choices) == field.metadata["choices"]
    assert params["output"].opts == ["--output", "-o"]
    assert isinstance(params["inputs"].type, click.Path) and params["inputs"].type.exists
    assert params["data_dir"].type.file_okay is False
    assert params["mean"].type is click.STRING and params["mean"].metavar == "M[,M,M]"
    # The parsed command line is a ConvertOptions: its defaults are the options' defaults.
    ctx = cli.convert.make_context("convert", ["run"])
    values = {k: v for k, v in ctx.params.items() if k in fields}
    assert ConvertOptions(**values) == ConvertOptions()


@pytest.mark.parametrize("values, message", [
    (dict(min_agreement=1.5), "Expected `min_agreement` between 0 and 1, got 1.5."),
    (dict(samples=0), "Expected `samples` >= 1, got 0."),
    (dict(int8=True, calibration_samples=0), "Expected `calibration_samples` >= 1 and "
                                             "`fine_tune_epochs` >= 0, got 0 and 0."),
    (dict(no_metadata=True, mean="0.5", std=1.0), "`no_metadata` converts without `mean` "
                                                  "`std`; pass one or the other."),
    (dict(target="x86"), "Expected `target` one of arm64, arm, xcore, got 'x86'."),
])
def test_convert_options_refuse_bad_values_before_any_work(values, message, tmp_path):
    """A bad value is refused when the options are made (the library names the field, `bnn
    convert` its option), before a model is looked for."""
    from bnn_keras.errors import BnnError
    from convert.options import ConvertOptions
    from convert.workflow import convert_trained_model

    with pytest.raises(BnnError) as made:
        ConvertOptions(**values)
    assert str(made.value) == message
    missing = tmp_path / "no-such-run"
    with pytest.raises(BnnError, match=re.escape(message)):
        convert_trained_model(missing, **values)
    if "target" not in values:  # (click refuses a bad --target choice itself)
        args = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
                for k, v in values.items()]
        line = _one_line_error(invoke(["convert", str(missing), *args]))
        assert line.startswith("Error: Expected --") or line.startswith("Error: --no-metadata")
        assert "`" not in line


def _train_context(click, cli):
    ctx = click.Context(cli.main)
    ctx.invoked_subcommand = "train"
    return ctx


def test_library_messages_name_fields_and_the_cli_shows_options():
    import click

    import cli
    from bnn_keras.options import spell_fields

    assert spell_fields("Expected `batch_size` >= 1 (`bnn train --resume R`), `other`.",
                        {"batch_size": "--batch-size"}) == (
        "Expected --batch-size >= 1 (`bnn train --resume R`), `other`.")
    ctx = click.Context(cli.main)
    ctx.invoked_subcommand = "convert"
    assert cli.main._spelled(ctx, "`int8_io` needs `int8`; `bundle`, `source`, `nothing`.") == (
        "--int8-io needs --int8; --bundle, RUN_DIR_OR_MODEL_FILE, `nothing`.")


def test_convert_zoo_style_files_subclass_and_custom_objects(tmp_path):
    """A larq-zoo-shaped model file converts: the DenseNet-like subclass that cannot be imported
    by its functional graph, QuickNet's blur-pool initializer given with --custom-objects."""
    import numpy as np

    from tests.convert.test_loading import (OBJECTS_MODULE, _dense_net_like,
                                            _quicknet_transition_like)

    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("f4"))
    _dense_net_like().save(tmp_path / "dense.h5")
    _quicknet_transition_like().save(tmp_path / "quick.keras")
    (tmp_path / "objs.py").write_text(OBJECTS_MODULE.replace("@REGISTER", "# dict form"))
    common = ["--inputs", str(tmp_path / "x.npy"), "--no-metadata"]
    result = invoke(["convert", str(tmp_path / "dense.h5"), "-o", str(tmp_path / "d.tflite"),
                     *common])
    assert result.exit_code == 0, result.output
    assert re.search(r"LceBconv2d / binary convs\s+1 / 1", result.output)
    quick = str(tmp_path / "quick.keras")
    line = _one_line_error(invoke(["convert", quick, "-o", str(tmp_path / "q.tflite"), *common]))
    assert line.startswith(f"Error: Could not load {quick} as a Keras model (Unknown "
                           f"initializer: 'blurpool_initializer'); pass the module that "
                           f"defines 'blurpool_initializer' with --custom-objects")
    assert not (tmp_path / "q.tflite").exists()
    result = invoke(["convert", quick, "-o", str(tmp_path / "q.tflite"), *common,
                     "--custom-objects", f"{tmp_path / 'objs.py'}:OBJECTS"])
    assert result.exit_code == 0, result.output
    assert re.search(r"top-1 agreement 100\.00%", result.output)
    assert (tmp_path / "q.tflite").stat().st_size > 0
    # An import error is one line that names the module, before any work starts.
    line = _one_line_error(invoke(["convert", quick, "--custom-objects", "objs_not_here:X"]))
    assert line.startswith("Error: --custom-objects module 'objs_not_here' could not be "
                           "imported (ModuleNotFoundError: No module named 'objs_not_here')")
    assert "Converting" not in invoke(["convert", quick, "--custom-objects", "nope_x"]).output


def test_summary_takes_model_options_of_a_registry_model(tmp_path):
    import models

    model = models.create_model("reactnet-a", input_shape=(8, 8, 1), num_classes=10,
                                widths=[8, 16, 16])
    result = invoke(["summary", "reactnet-a", "--input-shape", "8,8,1", "--num-classes", "10",
                     "--model-option", "widths=[8,16,16]"])
    assert result.exit_code == 0, result.output
    assert f"Total params: {model.count_params():,} (" in result.stdout
    model.save(tmp_path / "m.keras")
    line = _one_line_error(invoke(["summary", tmp_path / "m.keras", "--model-option", "widths=[8]"]))
    assert line == (f"Error: --model-option are options of a registry model's builder; "
                    f"{tmp_path / 'm.keras'} is a model file or run folder, built already.")


@pytest.mark.parametrize("name, shape, options, bconvs", [
    ("reactnet-a", "8,8,1", ["widths=[8,16,16]"], None),
    ("quicknet", "16,16,1", ["section_filters=[8,8,16,16]", "section_blocks=[1,1,1,1]"], 4),
    ("binary-resnet-e18", "16,16,1", ["stage_filters=[8,8,16,16]"], None),
])
def test_summary_convert_measures_the_flatbuffer_inside_the_predicted_range(name, shape,
                                                                           options, bconvs):
    """Small models, where the graph outweighs the weights: the converted file lies in the
    printed error bar, and the LceBconv2d count is the predicted one."""
    result = invoke(["summary", name, "--input-shape", shape, "--num-classes", "10",
                     *[arg for option in options for arg in ("--model-option", option)],
                     "--convert"])
    assert result.exit_code == 0, result.output
    expected = int(re.search(r"^Expected LceBconv2d ops: (\d+)$", result.stdout, re.M).group(1))
    if bconvs is not None:
        assert expected == bconvs
    line = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"Converted \(LCE, arm64\): [\d,]+ bytes \([\d.]+ KiB, inside the "
                        rf"predicted range\), {expected} LceBconv2d ops \(expected {expected}\)",
                        line), line
