"""The Fashion-MNIST benchmark: its wall-time learning-rate decay (cosine or linear) really sets
the rate of the optimizer's updates (Keras recomputes a scheduled rate at every step, so
assigning the rate from a callback does nothing), for Adam and for the Adam + SGD split; its
clocks; its table's text and a combined table's machines; its `-ff` rows, binarized from their
float copy (its refusals: test_fashion_mnist_arguments.py)."""

import hashlib
import json
import math

import numpy as np
import larq as lq
import pytest
import tensorflow as tf

import models
from bnn_keras.training import recipes
from bnn_keras.training.config import RunRecord
from bnn_keras.training.precision import hardware_summary
from tests.benchmarks.conftest import write_fashion_idx


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def rates(optimizer):
    """The rate of each optimizer's last update (legacy ones: their schedule at their step)."""
    found = []
    for inner in getattr(optimizer, "optimizers", [optimizer]):
        rate = inner.learning_rate
        found.append(float(rate(inner.iterations - 1) if callable(rate) else rate))
    return found


@pytest.mark.parametrize("shape", ["cosine", "linear"])
@pytest.mark.parametrize("optimizer,peaks", [("adam", [2e-3]), ("adam-sgd", [2e-3, 0.1])])
def test_time_decay_sets_the_rate_of_every_update(benchmark, tmp_path, optimizer, peaks, shape):
    model = models.create_model("quicknet", input_shape=(8, 8, 1), num_classes=10,
                                section_filters=[8, 8], section_blocks=[1, 1])
    recipe = recipes.Recipe(optimizer=optimizer, learning_rate=2e-3, float_learning_rate=0.1)
    model.compile(recipes.build_optimizer(recipe, model, steps_per_epoch=8, epochs=1),
                  "sparse_categorical_crossentropy")
    clock = FakeClock()
    seconds = 4.0
    decay = benchmark.TimeDecay(seconds, shape, clock=clock)
    seen, weights = [], []

    class Spy(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(rates(self.model.optimizer))
            weights.append([w.numpy().copy() for w in self.model.trainable_weights
                            if optimizer == "adam" or lq.optimizers.Bop.is_binary_variable(w)])
            clock.now += 1.0  # the next step starts a quarter of the budget later

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 64)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[decay, Spy()])

    for step, step_rates in enumerate(seen):
        progress = min(1.0, step / seconds)
        factor = 0.5 * (1 + math.cos(math.pi * progress)) if shape == "cosine" else 1 - progress
        np.testing.assert_allclose(step_rates, [p * factor for p in peaks], rtol=1e-5, atol=1e-9)
    # Past the budget the rate is 0: the steps after it leave every weight that Adam trains
    # as it was (SGD's momentum still moves the float weights of "adam-sgd").
    assert weights[-1]
    for before, after in zip(weights[4], weights[-1]):
        np.testing.assert_array_equal(before, after)
    # The run's own schedule is back: the saved model has its optimizer configuration.
    inner = getattr(model.optimizer, "optimizers", [model.optimizer])
    assert all(o.get_config()["learning_rate"]["class_name"].endswith("WarmupDecay")
               for o in inner)
    model.save(tmp_path / "model.keras")
    tf.keras.models.load_model(tmp_path / "model.keras")


def test_the_clocks_of_a_row_can_start_before_fit(benchmark):
    """A cached teacher's pass happens before `fit`: a row's decay and budget count it."""
    model = models.create_model("quicknet", input_shape=(8, 8, 1), num_classes=10,
                                section_filters=[8, 8], section_blocks=[1, 1])
    recipe = recipes.Recipe(optimizer="adam", learning_rate=2e-3)
    model.compile(recipes.build_optimizer(recipe, model, steps_per_epoch=8, epochs=1),
                  "sparse_categorical_crossentropy")
    clock = FakeClock()
    clock.now = 3.0  # `fit` starts 3 of the budget's 4 seconds after the clocks did
    decay = benchmark.TimeDecay(4.0, clock=clock, started=0.0)
    budget = benchmark.TimeBudget(4.0, batch_size=8, started=benchmark.time.perf_counter() - 5)
    seen = []

    class Spy(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(rates(self.model.optimizer)[0])

    x, y = np.zeros((64, 8, 8, 1), np.float32), np.zeros(64, np.int64)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[decay, budget, Spy()])
    np.testing.assert_allclose(seen[0], 2e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 4)),
                               rtol=1e-5)
    # The whole budget was spent before `fit`: it stops after its first step.
    assert budget.elapsed >= 5 and budget.images == 8


def test_the_table_names_what_a_run_changed_from_the_default_training(benchmark):
    """A row trained with label smoothing (or another decay, or augmentation) says so in the
    table's rate column, so that rows of several invocations in one `--combine` table differ."""
    plain = {"optimizer": "adam", "learning_rate": 0.01, "batch_size": 128, "decay": "cosine",
             "augment": "none", "label_smoothing": None}
    assert benchmark.optimizer_text(plain) == "Adam 0.01, 128"
    changed = dict(plain, label_smoothing=0.1, decay="linear", augment="crop_flip",
                   optimizer="adam-sgd", float_learning_rate=0.1)
    assert benchmark.optimizer_text(changed) == (
        "Adam 0.01 + SGD 0.1, 128, label smoothing 0.1, linear decay, crop_flip")
    assert benchmark.optimizer_text({"learning_rate": 0.002}) == "Adam 0.002 (constant), 256"


def test_a_float_first_row_binarizes_its_float_copy_within_the_budget(benchmark, tmp_path,
                                                                      monkeypatch, capsys):
    """A `-ff` row trains its float copy for `--float-share` of the budget, then the BNN from
    the float copy's weights: the BNN's run records that file, its latent weights start from
    the float copy's (their signs agree, where a fresh initialisation would agree on half),
    and both stages count in one budget."""
    data_dir = write_fashion_idx(tmp_path / "idx")
    monkeypatch.setattr(benchmark, "ROWS", benchmark.network_rows(
        "tiny", "quicknet", {"section_filters": [8, 16], "section_blocks": [1, 1]},
        "QuickNet 8-16", ("", "-ff")))
    output = tmp_path / "out"
    # A budget of 3 s at the reference speed: each stage trains a few steps.
    benchmark.main(["--rows", "tiny-ff", "--seeds", "0", "--budget", "0.05",
                    "--default-images-per-s", str(benchmark.REFERENCE_IMAGES_PER_S),
                    "--batch-size", "16", "--float-share", "0.5", "--data-dir", str(data_dir),
                    "--output", str(output)])
    measured = json.loads((output / "results.json").read_text())
    assert measured["machine"] == hardware_summary()
    [result] = measured["results"]
    float_dir, binary_dir = output / "tiny-ff-seed0-float-stage", output / "tiny-ff-seed0"
    record = RunRecord.read(binary_dir)
    float_file = float_dir / "model.keras"
    assert record.config.weights == str(float_file) and not record.config.float_copy
    assert record.weights_sha256 == hashlib.sha256(float_file.read_bytes()).hexdigest()
    assert RunRecord.read(float_dir).config.float_copy

    float_model = tf.keras.models.load_model(float_file)
    binary_model = tf.keras.models.load_model(binary_dir / "model.keras")
    kernels = [(layer.name, layer.kernel) for layer in binary_model.layers
               if isinstance(layer, lq.layers.QuantConv2D) and layer.kernel_quantizer]
    assert kernels
    for name, kernel in kernels:
        agree = np.mean(np.sign(kernel.numpy()) ==
                        np.sign(float_model.get_layer(name).kernel.numpy()))
        assert agree > 0.8, (name, agree)

    assert 0 < result["float_stage_s"] < result["wall_time_s"]
    assert result["float_first"] and result["float_share"] == 0.5
    assert 0 <= result["float_stage_accuracy"] <= 1
    # The curve is the BNN's: its snapshots come after the float stage.
    assert all(seconds >= result["float_stage_s"] for seconds, _, _ in result["curve"])
    assert result["lce_bconv2d"] == result["binary_convs"] > 0
    assert "float copy for 50% of the budget" in capsys.readouterr().out


def test_a_combined_table_says_which_machine_measured_each_invocation(benchmark, tmp_path,
                                                                      capsys):
    """`--combine` of invocations measured on different machines: one line per results.json
    names its machine (or says that an older file recorded none) and its budget there."""
    row = {"row": "quicknet-s2", "about": "QuickNet 32-128", "seed": 0, "optimizer": "adam",
           "learning_rate": 0.01, "batch_size": 64, "test_accuracy": 0.93, "wall_time_s": 1840.0,
           "teacher_time_s": 0.0, "images_per_s": 250.0, "epochs": 7.5,
           "binary_mac_fraction": 0.94, "distill": False, "float_copy": False, "budget": 30.0,
           "curve": [[920.0, 1000, 0.9], [1840.0, 2000, 0.93]]}
    avx2 = tmp_path / "avx2.json"
    avx2.write_text(json.dumps({
        "machine": "AMD EPYC, 2 CPUs, native bfloat16: no", "default_images_per_s": 180.0,
        "scale": 184 / 180, "budget": 30.0, "results": [dict(row, scale=184 / 180)]}))
    older = tmp_path / "older.json"
    older.write_text(json.dumps({
        "default_images_per_s": 717.0, "scale": 184 / 717, "budget": 30.0,
        "results": [dict(row, seed=1, scale=184 / 717, wall_time_s=462.0)]}))
    benchmark.main(["--combine", str(avx2), str(older), "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert (f"- {avx2}: AMD EPYC, 2 CPUs, native bfloat16: no; default network 180 images/s, "
            "so 30 reference minutes = 30.67 min there") in out
    assert (f"- {older}: machine not recorded; default network 717 images/s, so 30 reference "
            "minutes = 7.70 min there") in out
    # Both runs' wall time here, and the same 30 reference minutes.
    assert "| 30.7 min | 30.0 |" in out and "| 7.7 min | 30.0 |" in out
    assert (tmp_path / "out" / "accuracy.png").stat().st_size > 0


def test_the_help_describes_the_benchmark_in_a_whole_sentence(benchmark, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--help"])
    assert exit_info.value.code == 0
    assert ("test accuracy per CPU-minute of BNNs, their float copies and distilled students, "
            "under the same wall-time budget.") in " ".join(capsys.readouterr().out.split())
