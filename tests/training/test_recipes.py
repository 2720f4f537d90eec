"""Tests of bnn_keras.training.recipes: schedules against their formulas, Bop/Adam updates against NumPy
oracles, weight decay only on full-precision kernels, label smoothing against Keras' one-hot
loss, and the published recipes."""

import dataclasses
import json
import math

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.training import recipes
from bnn_keras.errors import BnnError
from bnn_keras.training import TrainConfig


def _tiny_model(binary=True):
    inputs = tf.keras.Input((6, 6, 2))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", name="fp_conv")(inputs)
    x = tf.keras.layers.BatchNormalization(name="bn")(x)
    quantizer = "ste_sign" if binary else None
    x = lq.layers.QuantConv2D(
        4, 3, padding="same", use_bias=False, input_quantizer=quantizer,
        kernel_quantizer=quantizer, name="bconv",
    )(x)
    x = tf.keras.layers.Flatten()(x)
    # Binary weights but float input: not an LceBconv2d, still a binary kernel.
    x = lq.layers.QuantDense(5, kernel_quantizer="ste_sign", name="bdense")(x)
    outputs = tf.keras.layers.Dense(3, activation="softmax", name="head")(x)
    return tf.keras.Model(inputs, outputs)


def _data(n=6):
    rng = np.random.RandomState(1)
    return rng.randn(n, 6, 6, 2).astype("float32"), (np.arange(n) % 3).astype("int64")


# -- schedules -------------------------------------------------------------------------------


def _values(schedule, steps):
    return np.array([float(schedule(tf.constant(s))) for s in steps])


def test_warmup_is_linear_from_zero_then_constant():
    schedule = recipes.WarmupDecay(0.01, warmup_steps=4)
    np.testing.assert_allclose(
        _values(schedule, [0, 1, 2, 3, 4, 100]), [0, 0.0025, 0.005, 0.0075, 0.01, 0.01], rtol=1e-6
    )


def test_step_decay_counts_boundaries_from_the_start_of_training():
    schedule = recipes.WarmupDecay(
        0.1, decay="step", warmup_steps=2, boundaries=[10, 20], multipliers=[1, 0.3, 0.09]
    )
    np.testing.assert_allclose(
        _values(schedule, [1, 2, 9, 10, 19, 20, 1000]),
        [0.05, 0.1, 0.1, 0.03, 0.03, 0.009, 0.009], rtol=1e-6,
    )


def test_linear_and_cosine_decay_follow_their_formulas():
    lr, warmup, total = 0.02, 10, 110
    steps = [10, 35, 60, 85, 110, 500]
    linear = recipes.WarmupDecay(lr, decay="linear", warmup_steps=warmup, total_steps=total)
    cosine = recipes.WarmupDecay(lr, decay="cosine", warmup_steps=warmup, total_steps=total)
    progress = [min(1.0, (s - warmup) / (total - warmup)) for s in steps]
    np.testing.assert_allclose(_values(linear, steps), [lr * (1 - p) for p in progress], atol=1e-9)
    np.testing.assert_allclose(
        _values(cosine, steps), [lr * 0.5 * (1 + math.cos(math.pi * p)) for p in progress],
        rtol=1e-5, atol=1e-9,
    )


def test_schedule_serializes_under_the_bnn_keras_package():
    schedule = recipes.WarmupDecay(
        3e-3, decay="step", warmup_steps=5, total_steps=50, boundaries=[20], multipliers=[1, 0.1]
    )
    serialized = tf.keras.optimizers.schedules.serialize(schedule)
    assert serialized["registered_name"] == "bnn_keras>WarmupDecay"
    restored = tf.keras.optimizers.schedules.deserialize(json.loads(json.dumps(serialized)))
    assert isinstance(restored, recipes.WarmupDecay)
    assert restored.get_config() == schedule.get_config()
    assert float(restored(tf.constant(30))) == pytest.approx(3e-4)


def test_build_schedule_turns_epochs_into_steps():
    recipe = recipes.Recipe(
        learning_rate=0.1, schedule="step", step_epochs=2, step_factor=0.5, warmup_epochs=0.5
    )
    schedule = recipes.build_schedule(recipe, steps_per_epoch=10, epochs=7)
    assert schedule.warmup_steps == 5
    assert schedule.boundaries == [20, 40, 60]
    assert schedule.multipliers == [1.0, 0.5, 0.25, 0.125]
    assert float(schedule(tf.constant(45))) == pytest.approx(0.025)


@pytest.mark.parametrize("given, origins", [
    (dict(epochs=1), ("the recipe's, Larq Compute Engine (arXiv 2011.09398); larq-zoo "
                      "larq_zoo/training/sota_experiments.py TrainQuickNet", "given")),
    (dict(epochs=1, warmup_epochs=2), ("given", "given")),
])
def test_a_warmup_as_long_as_the_run_says_where_each_value_came_from(given, origins):
    """`--recipe paper --epochs 1` on QuickNet (5 warm-up epochs in its recipe): the message
    names both fields (the CLI spells them as options) and where each value came from."""
    from bnn_keras.training import TrainConfig, resolve_recipe

    config = TrainConfig(model="quicknet", recipe="paper", **given)
    with pytest.raises(BnnError) as refused:
        resolve_recipe(config)
    warmup = given.get("warmup_epochs", 5)
    assert str(refused.value) == (
        f"`warmup_epochs` {warmup} ({origins[0]}) must be below `epochs` 1 ({origins[1]}): a "
        f"cosine schedule warms up first; give `epochs` above {warmup} or `warmup_epochs` "
        "below 1.")


def test_recipe_describes_itself_in_one_line():
    import models

    paper = recipes.paper_recipe("binary-densenet28")
    assert paper.describe() == (
        "adam at 0.004, epsilon 1e-08; step schedule (x0.1 at epochs 100, 110); 120 epochs, "
        f"batch 256 (from {models.get_entry('binary-densenet28').recipe.source})")
    quicknet = recipes.paper_recipe("quicknet", optimizer="adam-sgd")
    assert quicknet.describe().startswith(
        "adam-sgd at 0.01 (binary kernels), SGD at 0.1 with momentum 0.9 (the others); 5 "
        "warm-up epochs, then cosine schedule; ")
    assert recipes.default_recipe().describe() == "adam at 0.001; constant schedule (from bnn default)"


def test_cosine_needs_a_warmup_shorter_than_the_run():
    recipe = recipes.Recipe(schedule="cosine", warmup_epochs=3)
    with pytest.raises(BnnError, match="warmup_epochs < epochs"):
        recipes.build_schedule(recipe, steps_per_epoch=10, epochs=3)


# -- optimizers ------------------------------------------------------------------------------


def _one_step(model, optimizer):
    """One eager optimizer step; returns (weights before, gradients) by variable name."""
    x, y = _data()
    model.compile(optimizer=optimizer, loss=recipes.loss(recipes.default_recipe()))
    with tf.GradientTape() as tape:
        loss = model.compiled_loss(tf.constant(y), model(x, training=True))
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    before = {v.name: v.numpy().copy() for v in variables}
    gradients = {v.name: g.numpy() for v, g in zip(variables, grads)}
    optimizer.apply_gradients(zip(grads, variables))
    return before, gradients


def test_bop_flips_binary_kernels_and_adam_moves_float_weights():
    tf.keras.utils.set_random_seed(0)
    model = _tiny_model()
    recipe = recipes.Recipe(optimizer="bop", learning_rate=1e-3, bop_threshold=1e-12, bop_gamma=1.0)
    optimizer = recipes.build_optimizer(recipe, model, steps_per_epoch=1, epochs=1)
    assert isinstance(optimizer, lq.optimizers.CaseOptimizer)
    before, grads = _one_step(model, optimizer)

    # Bop with gamma 1: m = g, w flips where w * g > threshold, else keeps its sign (and is +-1).
    for name in ("bconv/kernel:0", "bdense/kernel:0"):
        w, g = before[name], grads[name]
        expected = np.where(w * g > 1e-12, -np.sign(w), np.sign(w))
        np.testing.assert_array_equal(model.get_layer(name.split("/")[0]).kernel.numpy(), expected)
        assert (w * g > 0).any()  # some weights did flip

    # Adam's first step moves every float weight by lr * g / (|g| + eps'), i.e. -lr * sign(g).
    w, g = before["fp_conv/kernel:0"], grads["fp_conv/kernel:0"]
    moved = model.get_layer("fp_conv").kernel.numpy() - w
    mask = np.abs(g) > 1e-4
    np.testing.assert_allclose(moved[mask], -1e-3 * np.sign(g[mask]), rtol=1e-2)


def test_adam_sgd_moves_binary_kernels_with_adam_and_float_weights_with_sgd():
    tf.keras.utils.set_random_seed(0)
    model = _tiny_model()
    recipe = recipes.Recipe(
        optimizer="adam-sgd", learning_rate=1e-3, float_learning_rate=0.05, sgd_momentum=0.9
    )
    optimizer = recipes.build_optimizer(recipe, model, steps_per_epoch=1, epochs=1)
    assert isinstance(optimizer, lq.optimizers.CaseOptimizer)
    before, grads = _one_step(model, optimizer)

    # Adam's first step on the binary latent weights: -lr * g / (|g| + eps'), i.e. -lr * sign(g).
    for name in ("bconv/kernel:0", "bdense/kernel:0"):
        g = grads[name]
        moved = model.get_layer(name.split("/")[0]).kernel.numpy() - before[name]
        mask = np.abs(g) > 1e-4
        np.testing.assert_allclose(moved[mask], -1e-3 * np.sign(g[mask]), rtol=1e-2)
    # SGD's first step with momentum (velocity starts at 0): -lr * g, on every float weight.
    for name in ("fp_conv/kernel:0", "bn/gamma:0", "head/kernel:0"):
        layer_name, weight = name.split("/")
        moved = getattr(model.get_layer(layer_name), weight.split(":")[0]).numpy() - before[name]
        np.testing.assert_allclose(moved, -0.05 * grads[name], rtol=1e-4, atol=1e-9)


def test_adam_recipe_is_plain_adam_with_the_schedule():
    model = _tiny_model()
    recipe = recipes.Recipe(learning_rate=2e-3, schedule="linear", adam_epsilon=1e-8)
    optimizer = recipes.build_optimizer(recipe, model, steps_per_epoch=5, epochs=2)
    assert isinstance(optimizer, tf.keras.optimizers.Adam)
    assert type(optimizer).__module__ == "bnn_keras.optimizers"  # its step traced leaner
    assert optimizer.epsilon == 1e-8
    schedule = optimizer._learning_rate  # the property returns the current value
    assert isinstance(schedule, recipes.WarmupDecay)
    assert float(schedule(tf.constant(5))) == pytest.approx(1e-3)


def test_bop_without_binary_kernels_is_a_clear_error():
    plain = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    with pytest.raises(BnnError, match="no binary kernels"):
        recipes.build_optimizer(recipes.Recipe(optimizer="bop"), plain, steps_per_epoch=1, epochs=1)


def test_saved_model_reloads_with_schedule_and_optimizer_state(tmp_path):
    model = _tiny_model()
    recipe = recipes.Recipe(learning_rate=1e-2, schedule="cosine", warmup_epochs=1)
    optimizer = recipes.build_optimizer(recipe, model, steps_per_epoch=4, epochs=3)
    _one_step(model, optimizer)
    model.save(tmp_path / "model.keras")
    restored = tf.keras.models.load_model(tmp_path / "model.keras")
    assert int(restored.optimizer.iterations.numpy()) == 1
    assert restored.optimizer._learning_rate.get_config() == optimizer._learning_rate.get_config()
    for original, loaded in zip(optimizer.variables(), restored.optimizer.variables()):
        np.testing.assert_array_equal(loaded.numpy(), original.numpy())


# -- weight decay ------------------------------------------------------------------------------


def test_weight_decay_skips_binary_kernels():
    model = _tiny_model()
    decayed = recipes.add_weight_decay(model, 1e-3)
    assert sorted(v.name for v in decayed) == ["fp_conv/kernel:0", "head/kernel:0"]
    assert sorted(v.name for v in recipes.binary_kernels(model)) == [
        "bconv/kernel:0", "bdense/kernel:0"
    ]
    fp, head = model.get_layer("fp_conv").kernel, model.get_layer("head").kernel
    expected = 1e-3 * (np.sum(fp.numpy() ** 2) + np.sum(head.numpy() ** 2))
    assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-5)
    bconv = model.get_layer("bconv").kernel
    with tf.GradientTape() as tape:
        penalty = tf.add_n(model.losses)
    grad_fp, grad_bconv = tape.gradient(penalty, [fp, bconv])
    np.testing.assert_allclose(grad_fp.numpy(), 2e-3 * fp.numpy(), rtol=1e-5)
    assert grad_bconv is None


def test_weight_decay_covers_a_quantized_conv_without_binary_kernel():
    model = _tiny_model(binary=False)
    decayed = {v.name for v in recipes.add_weight_decay(model, 1e-4)}
    assert "bconv/kernel:0" in decayed and "bdense/kernel:0" not in decayed


def test_zero_weight_decay_adds_no_loss():
    model = _tiny_model()
    assert recipes.add_weight_decay(model, 0.0) == []
    assert model.losses == []


# -- loss ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("label_shape", [(6,), (6, 1)])
def test_label_smoothing_matches_keras_one_hot_loss(from_logits, label_shape):
    rng = np.random.RandomState(0)
    logits = rng.randn(6, 4).astype("float32") * 3
    y_pred = logits if from_logits else tf.nn.softmax(logits).numpy()
    labels = np.array([0, 3, 1, 2, 3, 0])
    smoothed = recipes.loss(recipes.Recipe(label_smoothing=0.2), from_logits=from_logits)
    oracle = tf.keras.losses.CategoricalCrossentropy(label_smoothing=0.2, from_logits=from_logits)
    got = float(smoothed(labels.reshape(label_shape), y_pred))
    assert got == pytest.approx(float(oracle(np.eye(4)[labels], y_pred)), rel=1e-5)
    plain = recipes.loss(recipes.default_recipe(), from_logits=from_logits)
    unsmoothed = float(plain(labels, y_pred))
    assert got != pytest.approx(unsmoothed, rel=1e-3)  # smoothing changed the value


def test_smoothed_loss_config_round_trip():
    loss = recipes.SmoothedSparseCategoricalCrossentropy(0.1, from_logits=True)
    restored = tf.keras.losses.deserialize(tf.keras.losses.serialize(loss))
    assert isinstance(restored, recipes.SmoothedSparseCategoricalCrossentropy)
    assert restored.get_config() == loss.get_config()


# -- recipes ------------------------------------------------------------------------------------


def test_default_recipe_matches_train_config():
    recipe = recipes.default_recipe()
    assert (recipe.optimizer, recipe.schedule) == ("adam", "constant")
    assert recipe.learning_rate == 1e-3
    assert (recipe.label_smoothing, recipe.weight_decay) == (0.0, 0.0)
    # A TrainConfig that sets nothing trains with exactly this recipe.
    from bnn_keras.training import resolve_recipe

    config, resolved = resolve_recipe(TrainConfig(model="binary-densenet28"))
    assert resolved == recipe.replace(epochs=10, batch_size=64)
    assert (config.learning_rate, config.optimizer, config.epochs, config.batch_size) == (
        1e-3, "adam", 10, 64)


def test_recipe_json_round_trip():
    recipe = recipes.paper_recipe("xnornet")
    restored = recipes.Recipe.from_dict(json.loads(json.dumps(dataclasses.asdict(recipe))))
    assert restored == recipe


def test_recipe_rejects_unknown_fields_and_bad_values():
    with pytest.raises(BnnError, match="Unknown recipe fields"):
        recipes.Recipe.from_dict({"lr": 1})
    with pytest.raises(BnnError, match="schedule"):
        recipes.Recipe(schedule="exponential").validate()
    with pytest.raises(BnnError, match="step_multipliers"):
        recipes.Recipe(schedule="step", step_boundaries=(1,), step_multipliers=(1.0,)).validate()


def test_paper_recipe_values_and_unknown_model():
    densenet = recipes.paper_recipe("binary-densenet28")
    assert (densenet.learning_rate, densenet.step_boundaries, densenet.batch_size) == (
        4e-3, (100, 110), 256
    )
    assert recipes.paper_recipe("binarynet", optimizer="bop").bop_gamma == 1e-4
    with pytest.raises(BnnError, match="binary-densenet28") as error:
        recipes.paper_recipe("compact-bnn")
    assert "compact-bnn" in str(error.value)


def test_every_registered_paper_recipe_builds_a_valid_recipe_and_schedule():
    import models

    for name in models.list_models():
        entry = models.get_entry(name)
        for published in (entry.recipe, entry.bop_recipe):
            if published is None:
                continue
            assert published.source, name
            # Only Recipe fields: a misspelt key in a registry entry fails here, not in a run.
            assert set(published.values) <= {f.name for f in dataclasses.fields(recipes.Recipe)}
        if entry.recipe is None:
            continue
        recipe = recipes.paper_recipe(name)
        recipe.validate()
        schedule = recipes.build_schedule(recipe, steps_per_epoch=10, epochs=recipe.epochs)
        peak_step = int(round(recipe.warmup_epochs * 10))
        assert float(schedule(tf.constant(peak_step))) == pytest.approx(recipe.learning_rate), name


# What `bnn train MODEL --recipe paper` resolved to before the recipes moved into the registry
# entries (recorded from bnn_keras.training.recipes.PAPER_RECIPES / BOP_RECIPES at commit
# 79bbe7c): the values that differ from `Recipe`'s defaults, and the defaults themselves.
_RECIPE_DEFAULTS = dict(
    optimizer="adam", learning_rate=1e-3, float_learning_rate=0.1, sgd_momentum=0.9,
    schedule="constant", warmup_epochs=0.0, step_epochs=None, step_boundaries=None,
    step_factor=0.1, step_multipliers=None, label_smoothing=0.0, weight_decay=0.0,
    adam_epsilon=1e-7, bop_threshold=1e-8, bop_gamma=1e-4, bop_gamma_step_epochs=None,
    bop_gamma_step_factor=0.1, epochs=None, batch_size=None, source="",
)
_ZOO = "larq-zoo larq_zoo/training/basic_experiments.py"
_SIMPLICITY = f"Back to Simplicity (arXiv 1906.08637); {_ZOO}"
_DENSENET = dict(learning_rate=0.004, schedule="step", adam_epsilon=1e-08)
_QUICKNET = dict(
    optimizer="adam-sgd", learning_rate=0.01, schedule="cosine", warmup_epochs=5, epochs=600,
    batch_size=2048, source="Larq Compute Engine (arXiv 2011.09398); larq-zoo "
    "larq_zoo/training/sota_experiments.py TrainQuickNet",
)
_PUBLISHED = {
    ("binary-alexnet", "adam"): dict(
        learning_rate=0.01, schedule="step", step_epochs=10, step_factor=0.5, epochs=150,
        batch_size=512, source=f"BinaryNet AlexNet (arXiv 1602.02830); {_ZOO} TrainBinaryAlexNet"),
    ("binary-densenet28", "adam"): dict(
        _DENSENET, step_boundaries=(100, 110), epochs=120, batch_size=256,
        source=f"{_SIMPLICITY} TrainBinaryDenseNet28"),
    ("binary-densenet37", "adam"): dict(
        _DENSENET, step_boundaries=(100, 110), epochs=120, batch_size=192,
        source=f"{_SIMPLICITY} TrainBinaryDenseNet37"),
    ("binary-densenet37-dilated", "adam"): dict(
        _DENSENET, step_boundaries=(60, 70), epochs=80, batch_size=256,
        source=f"{_SIMPLICITY} TrainBinaryDenseNet37Dilated"),
    ("binary-densenet45", "adam"): dict(
        _DENSENET, learning_rate=0.008, step_boundaries=(80, 100), epochs=125, batch_size=384,
        source=f"{_SIMPLICITY} TrainBinaryDenseNet45"),
    ("binary-resnet-e18", "adam"): dict(
        _DENSENET, step_boundaries=(70, 90, 110), step_factor=0.3, epochs=120, batch_size=1024,
        source=f"{_SIMPLICITY} TrainBinaryResNetE18"),
    ("binarynet", "adam"): dict(
        schedule="step", step_epochs=1, step_factor=0.9839074353050999, epochs=500,
        batch_size=50,
        source="BinaryNet (arXiv 1602.02830); MatthieuCourbariaux/BinaryNet Train-time/cifar10.py"),
    ("binarynet", "bop"): dict(
        optimizer="bop", learning_rate=0.01, bop_gamma_step_epochs=100, batch_size=50,
        source="Bop (arXiv 1906.02107) sec. 5.2; plumerai/rethinking-bnn-optimization bop_sec52"),
    ("birealnet18", "adam"): dict(
        learning_rate=0.005, schedule="linear", epochs=300, batch_size=512,
        source=f"Bi-Real Net (arXiv 1808.00278); {_ZOO} TrainBiRealNet"),
    ("dorefanet", "adam"): dict(
        learning_rate=0.0002, schedule="step", step_boundaries=(60, 75, 82, 84, 86, 88),
        step_multipliers=(1.0, 0.2, 0.04, 0.004, 0.0004, 4e-05, 4e-06), adam_epsilon=1e-05,
        epochs=90, batch_size=256, source=f"DoReFa-Net (arXiv 1606.06160); {_ZOO} TrainDoReFaNet"),
    ("quicknet", "adam"): _QUICKNET,
    ("quicknet-large", "adam"): _QUICKNET,
    ("quicknet-small", "adam"): _QUICKNET,
    ("xnornet", "adam"): dict(
        schedule="step", step_boundaries=(19, 30, 44, 53, 66, 76, 86),
        step_multipliers=(1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 0.0001), epochs=100,
        batch_size=1200, source=f"XNOR-Net (arXiv 1603.05279); {_ZOO} TrainXNORNet"),
    ("reactnet-a", "adam"): dict(
        learning_rate=0.0005, schedule="linear", weight_decay=0.0, epochs=256, batch_size=256,
        source="ReActNet (arXiv 2003.03488); github.com/liuzechun/ReActNet mobilenet/2_step2/"
        "run.sh (256-epoch setting, weight decay 0) and train.py"),
    ("real-to-binary-net", "adam"): dict(
        learning_rate=0.0002, schedule="cosine", warmup_epochs=10, epochs=75, batch_size=256,
        source="Real-to-Binary Convolutions (arXiv 2003.11535); larq-zoo "
        "larq_zoo/training/multi_stage_experiments.py TrainR2BBNNAlternative"),
    ("strong-baseline-net", "adam"): dict(
        learning_rate=0.0002, schedule="step", warmup_epochs=5, step_boundaries=(40, 60, 70),
        step_factor=0.1, epochs=75, batch_size=256,
        source="Real-to-Binary Convolutions (arXiv 2003.11535); larq-zoo "
        "larq_zoo/training/multi_stage_experiments.py TrainR2BStrongBaselineBNN"),
}


def test_paper_recipes_resolve_to_the_values_recorded_before_they_moved_to_the_registry():
    import models

    for name in models.list_models():
        for optimizer in recipes.OPTIMIZERS:
            # Any optimizer but bop starts from the model paper's recipe.
            expected = _PUBLISHED.get((name, "bop" if optimizer == "bop" else "adam"))
            if expected is None:
                with pytest.raises(BnnError, match=f"No published {optimizer} recipe for '{name}'"):
                    recipes.paper_recipe(name, optimizer=optimizer)
                continue
            assert dataclasses.asdict(recipes.paper_recipe(name, optimizer=optimizer)) == {
                **_RECIPE_DEFAULTS, **expected}, (name, optimizer)
    assert (set(_PUBLISHED) - {(n, "bop") for n in models.list_models()}) == {
        (n, "adam") for n in models.list_models() if models.get_entry(n).recipe}


def test_paper_recipe_is_a_fresh_recipe_that_leaves_the_registry_entry_unchanged():
    import models

    recipe = recipes.paper_recipe("binary-densenet28")
    recipe.learning_rate = 1.0
    assert recipes.paper_recipe("binary-densenet28").learning_rate == 4e-3
    assert models.get_entry("binary-densenet28").recipe.values["learning_rate"] == 4e-3


@pytest.mark.parametrize("args, expected", [
    (["binary-densenet28"], dict(_PUBLISHED["binary-densenet28", "adam"])),
    # The Bop paper gives no epoch count: the run's default of 10.
    (["binarynet", "--optimizer", "bop"], dict(_PUBLISHED["binarynet", "bop"], epochs=10)),
    # Single options override the paper's values, the rest stays.
    (["quicknet", "--lr", "0.02", "--epochs", "7"], dict(_QUICKNET, learning_rate=0.02, epochs=7)),
])
def test_bnn_train_recipe_paper_trains_with_the_registry_entrys_recipe(
    monkeypatch, tmp_path, args, expected
):
    from bnn_keras import training
    from tests.conftest import invoke

    seen = {}

    def train(config, build, run_dir, **kwargs):
        seen["recipe"] = training.resolve_recipe(config)[1]
        raise BnnError("stop here")

    monkeypatch.setattr(training, "train", train)
    result = invoke(["train", *args, "--recipe", "paper", "--output", tmp_path / "run"])
    assert result.exit_code == 2 and "Error: stop here" in result.output, result.output
    assert dataclasses.asdict(seen["recipe"]) == {**_RECIPE_DEFAULTS, **expected}
    assert not (tmp_path / "run").exists()


def test_bnn_train_recipe_paper_without_a_published_recipe_is_one_line(tmp_path):
    from tests.conftest import invoke

    result = invoke(["train", "compact-bnn", "--recipe", "paper", "--output", tmp_path / "run"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: No published adam recipe for 'compact-bnn'; "
                                    "models with one: binary-alexnet, binary-densenet28, ")
    assert not (tmp_path / "run").exists()


def test_quicknet_recipe_is_larq_zoos_adam_and_sgd_with_warmup():
    recipe = recipes.paper_recipe("quicknet-small")
    assert (recipe.optimizer, recipe.learning_rate, recipe.float_learning_rate) == (
        "adam-sgd", 1e-2, 0.1)
    assert (recipe.schedule, recipe.warmup_epochs, recipe.epochs, recipe.batch_size) == (
        "cosine", 5, 600, 2048)
    optimizer = recipes.build_optimizer(recipe, _tiny_model(), steps_per_epoch=10, epochs=20)
    binary_opt, float_opt = optimizer.optimizers  # the binary case, then the default
    # Both rise linearly over the 50 warm-up steps, then follow the cosine to 0 at step 200.
    for opt, peak in ((binary_opt, 1e-2), (float_opt, 0.1)):
        schedule = opt._get_hyper("learning_rate")
        assert float(schedule(tf.constant(25))) == pytest.approx(peak / 2)
        assert float(schedule(tf.constant(125))) == pytest.approx(peak / 2, rel=1e-5)
    assert float_opt._get_hyper("momentum") == 0.9


def test_binarynet_recipe_decays_exponentially_to_the_papers_final_rate():
    recipe = recipes.paper_recipe("binarynet")
    schedule = recipes.build_schedule(recipe, steps_per_epoch=1, epochs=recipe.epochs)
    # LR_start * LR_decay ** epoch with LR_decay = (3e-7 / 1e-3) ** (1 / 500).
    assert float(schedule(tf.constant(250))) == pytest.approx(1e-3 * (3e-7 / 1e-3) ** 0.5, rel=1e-4)
    assert float(schedule(tf.constant(499))) == pytest.approx(
        1e-3 * (3e-7 / 1e-3) ** (499 / 500), rel=1e-3
    )


def test_xnornet_recipe_uses_its_uneven_factors():
    recipe = recipes.paper_recipe("xnornet")
    schedule = recipes.build_schedule(recipe, steps_per_epoch=2, epochs=recipe.epochs)
    epochs = [0, 19, 30, 44, 53, 66, 76, 86]
    np.testing.assert_allclose(
        _values(schedule, [2 * e for e in epochs]),
        [1e-3, 5e-4, 1e-4, 5e-5, 1e-5, 5e-6, 1e-6, 1e-7], rtol=1e-5,
    )
