"""Staged training recipes (`bnn_keras.training.stages`): `bnn train MODEL --recipe paper` on a
model whose paper trains in stages trains them in order as one resumable run.

The staged runs here are ReActNet-A's two steps at 8x8 with widths [8, 8], a stem and one
block: the registry model with the fewest layers, and each stage's `fit` traces its step layer
by layer (a staged run took 4.0 s of CPU on the AVX2 machine; with widths [8, 16, 16], 6.5 s).
A stage that distils from an earlier stage is the same tiny model under a plan patched into
the registry (Real-to-Binary Net's stages are 12M-parameter models: their plan is checked as
values).
"""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.errors import BnnError
from bnn_keras.training import stages
from bnn_keras.training.config import TrainConfig
from bnn_keras.training.run import TrainingInterruptedError
from tests.conftest import invoke

SMALL = dict(dataset="digits", image_size=8, epochs=1, steps_per_epoch=2, batch_size=8,
             precision="float32", track_flips=False)
TINY = {"widths": [8, 8]}
CLI_SMALL = ["--recipe", "paper", "--dataset", "digits", "--image-size", "8", "--epochs", "1",
             "--steps-per-epoch", "2", "--batch-size", "8", "--precision", "float32",
             "--no-track-flips", "--verbose", "0", "--model-option", "widths=[8,8]"]
FINAL = ("model.keras", "config.json", "metrics.json", "history.csv")


def _config(**overrides) -> TrainConfig:
    return TrainConfig(**{"model": "reactnet-a", "recipe": "paper", "model_options": TINY,
                          **SMALL, **overrides})


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _hashes(folder: Path):
    return {str(p): _sha(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _kernel(model: tf.keras.Model, layer: str) -> np.ndarray:
    return model.get_layer(layer).kernel.numpy().copy()


def _load(path: Path) -> tf.keras.Model:
    return tf.keras.models.load_model(path, compile=False)


class _KernelAtStart(tf.keras.callbacks.Callback):
    """Keeps a binary conv's latent kernel when `fit` begins."""

    kernel = None

    def on_train_begin(self, logs=None):
        self.kernel = _kernel(self.model, "block1_conv1x1")


class _InterruptFirstBatch(tf.keras.callbacks.Callback):
    """Ctrl-C arriving at the first batch of a stage."""

    def on_train_batch_begin(self, batch, logs=None):
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def _staged_run(tmp_path_factory):
    """An uninterrupted staged run of tiny ReActNet-A, and step 2's kernel when it began."""
    run_dir = tmp_path_factory.mktemp("staged") / "run"
    start = _KernelAtStart()
    lines = []
    result = stages.train_staged(_config(), run_dir, verbose=0, report=lines.append,
                                 callbacks={"step2": [start]})
    return run_dir, start.kernel, result, lines


@pytest.fixture
def staged_run(_staged_run, tmp_path):
    """`_staged_run` with its folder copied for this test (trained once for the module)."""
    run_dir, *rest = _staged_run
    return (Path(shutil.copytree(run_dir, tmp_path / "staged")), *rest)


# -- the plans ------------------------------------------------------------------------------


def test_reactnet_plan_is_the_official_codes_two_steps(tmp_path):
    import models

    plan = stages.plan_stages(TrainConfig(model="reactnet-a", recipe="paper",
                                          teacher="teacher.keras"))
    step1, step2 = plan.stages
    assert [s.folder for s in plan.stages] == ["stages/1-step1", "stages/2-step2"]
    for stage in (step1, step2):
        c = stage.config
        assert (c.optimizer, c.learning_rate, c.schedule, c.epochs, c.batch_size) == (
            "adam", 5e-4, "linear", 256, 256)
        assert (c.teacher, c.distill_loss, c.distill_weight, c.distill_temperature) == (
            "teacher.keras", "distribution", 1.0, 1.0)
    assert step1.config.model_options == {"kernel_quantizer": None}
    assert step1.config.weight_decay == 1e-5 and step1.config.weights is None
    assert "mobilenet/1_step1" in step1.recipe.source
    assert step2.config.model_options == {} and step2.config.weight_decay == 0.0
    # Relative to the staged run's folder, wherever it is when the stage starts.
    assert step2.config.weights == "stages/1-step1/model.keras"
    assert "mobilenet/2_step2" in step2.recipe.source
    assert plan.notes == []
    # Without --teacher both steps learn from the labels, and the plan says so.
    alone = stages.plan_stages(TrainConfig(model="reactnet-a", recipe="paper"))
    assert [s.config.teacher for s in alone.stages] == [None, None]
    assert [s.config.distill_loss for s in alone.stages] == [None, None]
    assert "without `teacher` they learn from the labels alone" in alone.notes[0]
    # The single-stage paper recipe is the final stage's.
    assert dict(models.get_entry("reactnet-a").recipe.values) == dict(
        models.get_entry("reactnet-a").staged.final.recipe.values)


def test_real_to_binary_plan_is_larq_zoos_train_r2b():
    plan = stages.plan_stages(TrainConfig(model="real-to-binary-net", recipe="paper"))
    by_name = {s.name: s for s in plan.stages}
    assert list(by_name) == ["resnet18", "float", "ban", "bnn"]
    folder = Path("stages")
    resnet, fp, ban, bnn = (by_name[n] for n in by_name)
    assert resnet.config.model_options == {"stage": "resnet18"} and resnet.config.teacher is None
    assert (resnet.recipe.schedule, resnet.recipe.warmup_epochs, resnet.recipe.epochs,
            resnet.recipe.batch_size) == ("cosine", 5, 100, 512)
    assert "SGD" in resnet.note  # the documented difference from the zoo
    blocks = ",".join(f"block_{b}_out" for b in range(2, 10))
    for stage, teacher in ((fp, "1-resnet18"), (ban, "2-float")):
        r, c = stage.recipe, stage.config
        assert (r.learning_rate, r.schedule, r.warmup_epochs, r.step_boundaries,
                r.step_factor, r.epochs, r.batch_size) == (1e-3, "step", 5, (40, 60, 70), 0.3,
                                                           75, 256)
        # The zoo's CE + 3 KD + 30 AT + l2(1e-5), divided by 4.
        assert (c.distill_loss, c.distill_weight, c.distill_temperature) == ("kl", 0.75, 1.0)
        assert c.distill_attention_weight == 7.5 and c.distill_attention_layers == blocks
        assert c.weight_decay == pytest.approx(2.5e-6)
        assert c.teacher == str(folder / teacher) and c.weights is None
    assert (bnn.recipe.learning_rate, bnn.recipe.schedule, bnn.recipe.warmup_epochs,
            bnn.recipe.epochs) == (2e-4, "cosine", 10, 75)
    assert bnn.config.teacher == str(folder / "3-ban")
    assert bnn.config.weights == str(folder / "3-ban" / "model.keras")
    assert bnn.config.distill_weight == pytest.approx(0.8 / 1.8)
    assert bnn.config.distill_attention_weight is None and bnn.config.weight_decay == 0.0

    baseline = stages.plan_stages(TrainConfig(model="strong-baseline-net", recipe="paper"))
    ban, bnn = baseline.stages
    assert (ban.recipe.learning_rate, ban.recipe.step_factor, ban.config.weight_decay) == (
        1e-3, 0.1, 1e-5)
    assert (bnn.recipe.learning_rate, bnn.config.weight_decay, bnn.config.teacher) == (
        2e-4, 0.0, None)
    assert bnn.config.weights == str(folder / "1-ban" / "model.keras")


def test_the_users_options_apply_to_every_stage():
    plan = stages.plan_stages(TrainConfig(model="real-to-binary-net", recipe="paper",
                                          epochs=3, learning_rate=0.01, warmup_epochs=0,
                                          seed=7, dataset="digits", image_size=16))
    assert {(s.config.epochs, s.recipe.epochs, s.config.learning_rate, s.recipe.learning_rate,
             s.config.warmup_epochs, s.config.seed, s.config.dataset, s.config.image_size)
            for s in plan.stages} == {(3, 3, 0.01, 0.01, 0, 7, "digits", 16)}
    assert plan.options.learning_rate == 0.01  # recorded as given


@pytest.mark.parametrize("overrides, message", [
    (dict(weights="w.h5"), "`weights` does not apply to reactnet-a's staged recipe"),
    (dict(float_copy=True), "`float_copy` does not apply"),
    (dict(strategy="multi-worker"), "staged recipe trains in one process; drop `strategy`"),
    (dict(teacher="t.keras", distill_weight=0.5), "`distill_weight` is set by each stage"),
    (dict(teacher="t.keras", distill_cache=True),
     "reactnet-a's staged recipe runs each stage's teacher at every step; drop `distill_cache`"),
    (dict(model_options={"kernel_quantizer": "ste_sign"}),
     "`model_options` kernel_quantizer is set by stage step1"),
])
def test_options_a_stage_sets_itself_are_refused(overrides, message):
    with pytest.raises(BnnError, match=message.replace("(", r"\(")):
        stages.plan_stages(_config(**overrides))
    with pytest.raises(BnnError, match="`teacher` does not apply to real-to-binary-net's staged "
                                       r"recipe: its stages distil from its own stages \(resnet18"):
        stages.plan_stages(TrainConfig(model="real-to-binary-net", recipe="paper",
                                       teacher="t.keras"))


# -- a staged run ---------------------------------------------------------------------------


def test_a_staged_run_trains_every_stage_into_one_folder(staged_run, _staged_run):
    run_dir, step2_start, result, lines = staged_run
    step1, step2 = run_dir / "stages/1-step1", run_dir / "stages/2-step2"
    for folder in (step1, step2):
        assert json.loads((folder / "status.json").read_text())["state"] == "finished"
    # The staged run's folder holds the final stage's files, byte for byte.
    for name in FINAL:
        assert _sha(run_dir / name) == _sha(step2 / name), name
    # And its other epoch's model file, when its best epoch is not its last (`keep`).
    for name in ("best.keras", "last.keras"):
        assert (run_dir / name).is_file() == (step2 / name).is_file(), name
        if (step2 / name).is_file():
            assert _sha(run_dir / name) == _sha(step2 / name), name
    assert result.metrics == json.loads((step2 / "metrics.json").read_text())
    plan = json.loads((run_dir / "stages.json").read_text())
    assert plan["status"] == "finished"
    assert [(s["name"], s["status"]) for s in plan["stages"]] == [
        ("step1", "finished"), ("step2", "finished")]
    assert plan["stages"][1]["result"]["test_accuracy"] == result.metrics["test_accuracy"]
    assert plan["options"]["steps_per_epoch"] == 2
    # Step 1 trained real weights with its weight decay, step 2 binary ones without.
    config1 = json.loads((step1 / "config.json").read_text())
    config2 = json.loads((step2 / "config.json").read_text())
    assert config1["model_options"] == {**TINY, "kernel_quantizer": None}
    assert (config1["weight_decay"], config2["weight_decay"]) == (1e-5, 0.0)
    assert config2["model_options"] == TINY
    # Step 2 started from step 1's trained weights: recorded (where step 1 was trained, the
    # folder this one is a copy of), kept in step 2's folder, and at its first step.
    trained_step1 = _staged_run[0] / "stages/1-step1"
    assert config2["weights"] == str(trained_step1 / "model.keras")
    assert config2["weights_sha256"] == _sha(step1 / "model.keras")
    assert _sha(step2 / "inputs/weights.keras") == config2["weights_sha256"]
    assert plan["stages"][1]["config"]["weights"] == "stages/1-step1/model.keras"
    np.testing.assert_array_equal(step2_start, _kernel(_load(step1 / "model.keras"),
                                                       "block1_conv1x1"))
    assert not np.array_equal(step2_start, _kernel(_load(step2 / "model.keras"),
                                                   "block1_conv1x1"))
    assert lines[0].startswith("Note: reactnet-a's staged recipe distils")
    assert any(line.startswith("Stage 2/2 step2: ") and "from step1's weights" in line
               for line in lines)
    assert lines[-1].startswith("Stage 2/2 step2 finished: test accuracy ")


def test_an_interrupted_staged_run_resumes_to_the_same_weights(staged_run, tmp_path):
    finished_dir = staged_run[0]
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterruptedError, match=r"stage 2/2 \(step2\).*continue with: "
                                                       f"bnn train --resume {run_dir}"):
        stages.train_staged(_config(), run_dir, verbose=0,
                            callbacks={"step2": [_InterruptFirstBatch()]})
    plan = json.loads((run_dir / "stages.json").read_text())
    assert plan["status"] == "interrupted"
    assert [s["status"] for s in plan["stages"]] == ["finished", "interrupted"]
    assert not (run_dir / "model.keras").exists()
    step1 = _hashes(run_dir / "stages/1-step1")
    # The CLI resumes it: step 1 is kept as it was, step 2 trains from its start.
    result = invoke(["train", "--resume", str(run_dir), "--verbose", "0"])
    assert result.exit_code == 0, result.output
    assert f"Resuming staged run {run_dir}: reactnet-a, 1 of 2 stages done" in result.output
    assert "Stage 2/2 step2: " in result.output and "(resuming)" in result.output
    assert "Stage 1/2" not in result.output
    assert _hashes(run_dir / "stages/1-step1") == step1
    resumed, uninterrupted = _load(run_dir / "model.keras"), _load(finished_dir / "model.keras")
    for a, b in zip(resumed.weights, uninterrupted.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.name)
    assert json.loads((run_dir / "stages.json").read_text())["status"] == "finished"
    # Finished: a second resume is refused and changes nothing.
    before = _hashes(run_dir)
    again = invoke(["train", "--resume", str(run_dir)])
    assert again.exit_code == 2
    assert f"Error: Run {run_dir} already finished all its 2 stages; nothing to resume" in (
        again.output)
    assert _hashes(run_dir) == before


def test_sigterm_in_stage_1_keeps_its_epoch_and_resume_finishes_the_run(staged_run, tmp_path):
    """A real signal in a child process, while stage 1 is still inside its run's `fit` step
    (`BNN_TEST_PAUSE_AFTER_FIT`): stage 1 keeps its complete epoch, stage 2 has not started,
    and `--resume` ends with the uninterrupted run's weights."""
    import signal

    from tests.training.test_faults_train import finish, start_bnn, wait_for_line

    run_dir = tmp_path / "run"
    process = start_bnn(["train", "reactnet-a", *CLI_SMALL, "-o", run_dir],
                        BNN_TEST_PAUSE_AFTER_FIT=60)
    try:
        wait_for_line(process, "BNN_TEST_PAUSE_AFTER_FIT")
        process.send_signal(signal.SIGTERM)
        code, out, err = finish(process)
    finally:
        process.kill()
    assert code == 130, err
    assert ("Error: Training interrupted in stage 1/2 (step1); the finished stages and its last "
            f"complete epoch are kept; continue with: bnn train --resume {run_dir}") in err
    plan = json.loads((run_dir / "stages.json").read_text())
    assert [s["status"] for s in plan["stages"]] == ["interrupted", "pending"]
    assert not (run_dir / "stages/2-step2").exists() and not (run_dir / "model.keras").exists()
    result = invoke(["train", "--resume", str(run_dir), "--verbose", "0"])
    assert result.exit_code == 0, result.output
    assert "0 of 2 stages done" in result.output and "Stage 1/2 step1: " in result.output
    resumed, uninterrupted = _load(run_dir / "model.keras"), _load(staged_run[0] / "model.keras")
    for a, b in zip(resumed.weights, uninterrupted.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.name)


def test_a_stage_distils_from_an_earlier_stage(tmp_path, monkeypatch):
    """The mechanism of Real-to-Binary's stages on the tiny model: stage 2 distils from stage
    1's run folder (with attention matching) and starts from its weights."""
    from models import registry
    from models.recipes import PaperRecipe, RecipeStage, StagedRecipe

    entry = registry.get_entry("reactnet-a")
    plan = StagedRecipe("a test plan", (
        RecipeStage("teacher", {"kernel_quantizer": None}, PaperRecipe("t", {})),
        RecipeStage("student", {}, PaperRecipe("s", dict(learning_rate=2e-4)),
                    start_from="teacher", teacher="teacher",
                    train_options=dict(distill_loss="kl", distill_weight=0.75,
                                       distill_temperature=1.0, distill_attention_weight=7.5,
                                       distill_attention_layers="block1_rprelu1,block1_rprelu2")),
    ))
    monkeypatch.setitem(registry._REGISTRY, "reactnet-a", dataclasses.replace(entry, staged=plan))
    run_dir = tmp_path / "run"
    stages.train_staged(_config(), run_dir, verbose=0)
    teacher = run_dir / "stages/1-teacher"
    record = json.loads((run_dir / "stages/2-student/config.json").read_text())
    assert record["teacher"] == str(teacher.absolute())
    assert record["teacher_sha256"] == _sha(teacher / "model.keras")
    assert (record["distill_loss"], record["distill_weight"], record["distill_temperature"],
            record["distill_attention_weight"], record["distill_attention_layers"]) == (
        "kl", 0.75, 1.0, 7.5, "block1_rprelu1,block1_rprelu2")
    assert record["learning_rate"] == 2e-4
    assert json.loads((run_dir / "config.json").read_text()) == record
    history = (run_dir / "history.csv").read_text().splitlines()[0]
    assert "crossentropy" in history  # a distilled run logs the labels' loss beside its own


# -- the command ----------------------------------------------------------------------------


def test_cli_refusals_leave_nothing(tmp_path):
    run_dir = tmp_path / "run"
    result = invoke(["train", "reactnet-a", *CLI_SMALL, "--weights", "w.h5", "-o", str(run_dir)])
    assert result.exit_code == 2
    assert "Error: --weights does not apply to reactnet-a's staged recipe" in result.output
    result = invoke(["train", "real-to-binary-net", *CLI_SMALL[:-2], "-o", str(run_dir)])
    assert result.exit_code == 2  # its 5 and 10 warm-up epochs do not fit 1 epoch
    assert ("Error: Stage resnet18 of real-to-binary-net's staged recipe: --warmup-epochs 5 "
            "(the recipe's, ") in result.output
    assert ("must be below --epochs 1 (given): a cosine schedule warms up first; give --epochs "
            "above 5 or --warmup-epochs below 1.") in result.output
    # A model option the builder does not take: refused by stage 1, before its folder exists.
    result = invoke(["train", "reactnet-a", *CLI_SMALL, "--model-option", "depth=3",
                     "-o", str(run_dir)])
    assert result.exit_code == 2 and "reactnet-a has no option" in result.output
    assert not run_dir.exists()
    # A used folder is refused before anything is trained, and left as it was.
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    result = invoke(["train", "reactnet-a", *CLI_SMALL, "-o", str(used)])
    assert result.exit_code == 2 and "already exists and is not empty" in result.output
    assert _hashes(used) == {str(used / "keep.txt"): _sha(used / "keep.txt")}


def test_cli_resume_refusals(staged_run):
    run_dir = staged_run[0]
    before = _hashes(run_dir)
    stage = invoke(["train", "--resume", str(run_dir / "stages/1-step1")])
    assert stage.exit_code == 2
    assert (f"is a stage of the staged run {run_dir.resolve()}; continue the run with "
            f"`bnn train --resume {run_dir.resolve()}`") in stage.output
    epochs = invoke(["train", "--resume", str(run_dir), "--epochs", "3"])
    assert epochs.exit_code == 2 and "--epochs applies to every stage" in epochs.output
    changed = invoke(["train", "--resume", str(run_dir), "--lr", "0.1"])
    assert changed.exit_code == 2 and "--learning-rate 0.1 (the run has None)" in changed.output
    assert _hashes(run_dir) == before


def test_the_staged_run_folder_converts(staged_run, tmp_path):
    run_dir = staged_run[0]
    out = tmp_path / "model.tflite"
    result = invoke(["convert", str(run_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0


# -- a staged run is self-contained ----------------------------------------------------------


def _teacher_file(path: Path, seed: int = 0) -> Path:
    """A tiny softmax classifier of 8x8x1 digits saved as `path`."""
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.Dense(10)(tf.keras.layers.Flatten()(inputs))
    tf.keras.Model(inputs, tf.keras.layers.Activation("softmax")(x)).save(path)
    return path


class _ReplaceFileAtEnd(tf.keras.callbacks.Callback):
    """Overwrites `path` in place with `data` when a stage's `fit` ends."""

    def __init__(self, path: Path, data: bytes):
        super().__init__()
        self.path, self.data = path, data

    def on_train_end(self, logs=None):
        with open(self.path, "r+b") as f:  # the same inode: a hard link would follow it
            f.truncate(0)
            f.write(self.data)


@pytest.fixture(scope="module")
def users_teacher_run(tmp_path_factory):
    """`bnn train reactnet-a --recipe paper --teacher FILE`, FILE overwritten in place with
    another model when step 1's `fit` ends: (run folder, FILE, FILE's sha256 before the run,
    the command's Result). The two tests of the user's teacher read this one staged run (two
    stages of ~2 s each, trained once for the module rather than once per test)."""
    folder = tmp_path_factory.mktemp("users-teacher")
    teacher_file = _teacher_file(folder / "teacher.keras")
    original = _sha(teacher_file)
    other = _teacher_file(folder / "other.keras", seed=1).read_bytes()
    train_staged = stages.train_staged

    def replacing_the_teacher_after_step1(*args, **kwargs):
        return train_staged(*args, **kwargs,
                            callbacks={"step1": [_ReplaceFileAtEnd(teacher_file, other)]})

    run_dir = folder / "run"
    with pytest.MonkeyPatch.context() as patch:  # the command calls stages.train_staged
        patch.setattr(stages, "train_staged", replacing_the_teacher_after_step1)
        result = invoke(["train", "reactnet-a", *CLI_SMALL, "--teacher", str(teacher_file),
                         "-o", str(run_dir)])
    return run_dir, teacher_file, original, result


def test_reactnet_steps_both_learn_from_the_users_teacher(users_teacher_run, tmp_path):
    """--teacher gives both steps ReActNet's distribution loss from the same file."""
    missing_dir = tmp_path / "run"
    missing = invoke(["train", "reactnet-a", *CLI_SMALL, "--teacher", str(tmp_path / "no.keras"),
                      "-o", str(missing_dir)])
    assert missing.exit_code == 2 and "Error: --teacher " in missing.output
    assert not missing_dir.exists()
    run_dir, teacher_file, teacher_sha, result = users_teacher_run
    assert result.exit_code == 0, result.output
    assert "Note:" not in result.output
    assert f"distilled from {teacher_file} (distribution)" in result.output
    # Both steps distil from the staged run's own copy of the file (as it was when the run
    # started), which each keeps too.
    copy = run_dir / "inputs/teacher.keras"
    assert _sha(copy) == teacher_sha
    assert json.loads((run_dir / "stages.json").read_text())["teacher_sha256"] == _sha(copy)
    for folder in ("stages/1-step1", "stages/2-step2"):
        record = json.loads((run_dir / folder / "config.json").read_text())
        assert (record["teacher"], record["teacher_sha256"], record["distill_loss"],
                record["distill_weight"]) == (str(copy), teacher_sha, "distribution", 1.0)
        assert _sha(run_dir / folder / "inputs/teacher.keras") == teacher_sha


def test_a_teacher_replaced_between_stages_is_not_used(users_teacher_run):
    run_dir, teacher_file, original, result = users_teacher_run
    assert result.exit_code == 0, result.output
    assert _sha(teacher_file) != original  # the user's file did change between the stages
    for folder in ("stages/1-step1", "stages/2-step2"):
        record = json.loads((run_dir / folder / "config.json").read_text())
        assert record["teacher_sha256"] == original, folder
        assert _sha(run_dir / folder / "inputs/teacher.keras") == original, folder
    assert _sha(run_dir / "inputs/teacher.keras") == original


def test_a_moved_staged_run_resumes_from_its_own_files(tmp_path, monkeypatch):
    """Interrupted in stage 1, moved elsewhere, its teacher deleted and the command typed in
    another folder: the resume finishes both stages from the moved run's own files."""
    teacher_file = _teacher_file(tmp_path / "teacher.keras")
    original = tmp_path / "first" / "run"
    with pytest.raises(TrainingInterruptedError):
        stages.train_staged(_config(teacher=str(teacher_file)), original, verbose=0,
                            callbacks={"step1": [_InterruptFirstBatch()]})
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(original), str(moved))
    teacher_file.unlink()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = invoke(["train", "--resume", "run", "--verbose", "0"])
    assert result.exit_code == 0, result.output
    step1, step2 = moved / "stages/1-step1", moved / "stages/2-step2"
    config2 = json.loads((step2 / "config.json").read_text())
    assert config2["weights"] == str(step1 / "model.keras")
    assert config2["weights_sha256"] == _sha(step1 / "model.keras")
    assert config2["teacher"] == str(moved / "inputs/teacher.keras")
    assert json.loads((step1 / "config.json").read_text())["teacher_sha256"] == (
        config2["teacher_sha256"])
    assert not original.exists()
    assert json.loads((moved / "stages.json").read_text())["status"] == "finished"


def test_a_plan_records_the_users_teacher_and_reads_the_earlier_spelling():
    """The plan names the user's teacher by the recipe's `USER_TEACHER` (not an option's
    spelling), and a stages.json of bnn 0.3.0, which wrote "--teacher", reads the same."""
    from models.recipes import USER_TEACHER

    plan = stages.plan_stages(TrainConfig(model="reactnet-a", recipe="paper",
                                          teacher="teacher.keras"))
    assert [s.teacher for s in plan.stages] == [USER_TEACHER, USER_TEACHER] != ["--teacher"] * 2
    recorded = plan.to_dict()
    assert [s["teacher"] for s in recorded["stages"]] == [USER_TEACHER] * 2
    for stage in recorded["stages"]:
        stage["teacher"] = "--teacher"
    assert stages.StagedPlan.from_dict(recorded, "stages.json") == plan


@pytest.mark.parametrize("damage, message", [
    (lambda plan: plan.update(stages=[]), "it lists no stages"),
    (lambda plan: plan["stages"].__setitem__(1, 5), "stage 2 is not an object"),
    (lambda plan: plan["stages"][0].update(status="done"), "stage 1's status 'done' is not one"),
    (lambda plan: plan["stages"][0].update(folder="/tmp/elsewhere"),
     "stage 1's folder '/tmp/elsewhere' is not inside stages/"),
    (lambda plan: plan["stages"][1].update(folder="stages/../../x"), "is not inside stages/"),
    (lambda plan: plan["stages"][1].update(start_from="step9"),
     "stage 2 starts from 'step9', which is not an earlier stage"),
    (lambda plan: plan["options"].update(epochs="3"), "expected field 'epochs' to be"),
    (lambda plan: plan["stages"][0]["config"].update(colour=1), "unknown training option"),
    (lambda plan: plan.update(status=7), "'status' is not a string"),
])
def test_a_damaged_stages_json_is_one_line(staged_run, damage, message):
    run_dir = staged_run[0]
    plan = json.loads((run_dir / "stages.json").read_text())
    plan["status"] = "interrupted"
    damage(plan)
    (run_dir / "stages.json").write_text(json.dumps(plan))
    before = _hashes(run_dir)
    result = invoke(["train", "--resume", str(run_dir)])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith(f"Error: {run_dir / 'stages.json'} is damaged (") and "\n" not in line
    assert message in line
    assert _hashes(run_dir) == before
