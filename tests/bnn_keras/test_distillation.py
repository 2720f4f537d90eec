"""bnn_keras.distillation: the losses against their formulas, and a teacher that helps."""

import bnn_keras  # noqa: F401  (must precede tensorflow)
import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.distillation import (
    AttentionMatching,
    DistillSettings,
    attention_loss,
    attention_map,
    cached_distillation_model,
    check_teacher_outputs,
    classifier_logits,
    distillation_model,
    soft_target_loss,
    teacher_logits_of,
)
from bnn_keras.errors import BnnError


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_soft_target_loss_is_t_squared_kl_of_the_tempered_softmaxes():
    rng = np.random.default_rng(0)
    t, s = rng.normal(0, 3, (5, 7)), rng.normal(0, 3, (5, 7))
    for temperature in (1.0, 4.0):
        p, q = _softmax(t / temperature), _softmax(s / temperature)
        expected = temperature**2 * (p * np.log(p / q)).sum(axis=-1)
        got = soft_target_loss(tf.constant(t, tf.float32), tf.constant(s, tf.float32),
                               temperature).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # Zero when the student matches the teacher, at any temperature.
    np.testing.assert_allclose(soft_target_loss(tf.constant(t, tf.float32),
                                                tf.constant(t, tf.float32), 3.0), 0, atol=1e-5)


def test_soft_target_gradient_is_the_difference_of_the_softmaxes():
    # d/ds [T^2 KL(p_T || q_T)] = T (q_T - p_T) (Hinton et al., 2015, eq. 2).
    rng = np.random.default_rng(1)
    t = tf.constant(rng.normal(0, 2, (3, 5)), tf.float32)
    s = tf.Variable(rng.normal(0, 2, (3, 5)), dtype=tf.float32)
    temperature = 2.5
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(soft_target_loss(t, s, temperature))
    expected = temperature * (_softmax(s.numpy() / temperature) - _softmax(t.numpy() / temperature))
    np.testing.assert_allclose(tape.gradient(loss, s).numpy(), expected, rtol=1e-4, atol=1e-6)


def test_settings_defaults_and_one_line_errors():
    assert DistillSettings.for_loss("kl") == DistillSettings("kl", 0.5, 4.0)
    assert DistillSettings.for_loss("kl", weight=0.9, temperature=2).hard_label_weight == \
        pytest.approx(0.1)
    assert DistillSettings.for_loss("distribution") == DistillSettings("distribution", 1.0, 1.0)
    for kwargs, message in [
        (dict(loss="mse"), "Unknown `distill_loss` 'mse'; expected one of: kl, distribution."),
        (dict(loss="kl", weight=0.0), "Expected `distill_weight` in (0, 1], got 0.0."),
        (dict(loss="kl", temperature=-1.0),
         "Expected `distill_temperature` > 0 and finite, got -1.0."),
    ]:
        loss = kwargs.pop("loss")
        with pytest.raises(BnnError) as err:
            DistillSettings.for_loss(loss, **kwargs)
        assert str(err.value) == message
    with pytest.raises(BnnError, match="drop `distill_weight` and `distill_temperature`"):
        DistillSettings.for_loss("distribution", temperature=4.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=float("inf")), "Expected `distill_temperature` > 0 and finite, got inf."),
    (dict(temperature=float("nan")), "Expected `distill_temperature` > 0 and finite, got nan."),
    (dict(temperature=0), "Expected `distill_temperature` > 0 and finite, got 0.0."),
    (dict(weight=float("nan")), "Expected `distill_weight` in (0, 1], got nan."),
    (dict(weight=float("inf")), "Expected `distill_weight` in (0, 1], got inf."),
    (dict(weight=1.5), "Expected `distill_weight` in (0, 1], got 1.5."),
    (dict(attention_weight=float("inf"), attention_layers=["x"]),
     "Expected `distill_attention_weight` >= 0 and finite, got inf."),
    (dict(attention_weight=float("nan"), attention_layers=["x"]),
     "Expected `distill_attention_weight` >= 0 and finite, got nan."),
    (dict(weight="0.5"), "Expected `distill_weight` to be a number, got '0.5'."),
    (dict(temperature=True), "Expected `distill_temperature` to be a number, got True."),
])
def test_out_of_range_settings_are_refused(kwargs, message):
    # Both ways in: the defaults-filling constructor, and a dataclass built by hand.
    with pytest.raises(BnnError) as err:
        DistillSettings.for_loss("kl", **kwargs)
    assert str(err.value) == message
    with pytest.raises(BnnError) as err:
        DistillSettings(**kwargs).validate()
    assert str(err.value) == message


def _mlp(num_classes=10, *, binary=False, softmax_layer=True, seed=0, name=None):
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input((64,))
    if binary:
        x = lq.layers.QuantDense(128, kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                                 use_bias=False)(inputs)
        x = tf.keras.layers.BatchNormalization()(x)
        x = lq.layers.QuantDense(num_classes, input_quantizer="ste_sign",
                                 kernel_quantizer="ste_sign", kernel_constraint="weight_clip")(x)
        x = tf.keras.layers.BatchNormalization()(x)
    else:
        x = tf.keras.layers.Dense(64, activation="relu")(inputs)
        x = tf.keras.layers.Dense(num_classes, activation=None if softmax_layer else "softmax")(x)
    if softmax_layer:
        x = tf.keras.layers.Activation("softmax", dtype="float32")(x)
    return tf.keras.Model(inputs, x, name=name)


def test_logits_of_a_softmax_layer_and_log_probabilities_of_a_softmax_head():
    x = np.random.default_rng(2).normal(size=(4, 64)).astype("float32")
    model = _mlp()
    logits = classifier_logits(model)(x).numpy()
    np.testing.assert_allclose(_softmax(logits), model(x).numpy(), rtol=1e-5, atol=1e-6)
    head = _mlp(softmax_layer=False)
    log_p = classifier_logits(head, role="teacher")(x).numpy()
    np.testing.assert_allclose(_softmax(log_p), head(x).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(BnnError, match="does not end in a softmax layer"):
        classifier_logits(head, role="student")


# What a teacher outputs: its logits are read from its last layer, or decided on a batch.

# Each teacher head on the same hidden layer and logits layer z, and what it outputs.
TEACHER_HEADS = {
    "logits": "logits",  # Dense(10): z itself
    "softmax_layer": "probabilities",  # Dense(10) + Activation("softmax")
    "softmax_activation": "probabilities",  # Dense(10, activation="softmax")
    "softmax_op": "probabilities",  # tf.nn.softmax(z): a TFOpLambda, decided on a batch
    "rescaled_logits": "logits",  # Rescaling(2)(z), logits 2z: decided on a batch
}


def _teacher(head: str, seed: int = 7) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input((64,))
    x = tf.keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    # Logits spread over ~20: confident, as a trained teacher is.
    x = tf.keras.layers.Dense(10, activation="softmax" if head == "softmax_activation" else None,
                              kernel_initializer=tf.keras.initializers.RandomNormal(stddev=1.0),
                              bias_initializer="random_normal", name="z")(x)
    if head == "softmax_layer":
        x = tf.keras.layers.Activation("softmax")(x)
    elif head == "softmax_op":
        x = tf.nn.softmax(x)
    elif head == "rescaled_logits":
        x = tf.keras.layers.Rescaling(2.0)(x)
    return tf.keras.Model(inputs, x, name=f"{head}_teacher")


def _np_teacher_logits(teacher: tf.keras.Model, head: str, x: np.ndarray) -> np.ndarray:
    """The teacher's logits from its weights, in float64."""
    (w1, b1), (w2, b2) = (teacher.get_layer(name).get_weights() for name in ("hidden", "z"))
    z = np.maximum(x.astype("float64") @ w1 + b1, 0) @ w2 + b2
    return 2 * z if head == "rescaled_logits" else z


@pytest.mark.parametrize("head", sorted(TEACHER_HEADS))
def test_every_teacher_head_gives_the_distillation_loss_of_its_logits(head):
    """T**2 KL(softmax(t / T) || softmax(s / T)) on the teacher's logits t, in NumPy, whatever
    the teacher ends in; a teacher that outputs logits used to give log(negative) = NaN."""
    x = np.random.default_rng(8).normal(size=(6, 64)).astype("float32")
    teacher, student = _teacher(head), _mlp(seed=1, name="student")
    t = _np_teacher_logits(teacher, head, x)
    assert 10 < np.ptp(t, axis=-1).min() and np.ptp(t, axis=-1).max() < 40
    outputs = check_teacher_outputs(teacher, x)
    assert outputs == TEACHER_HEADS[head]
    settings = DistillSettings.for_loss("kl", weight=0.7, temperature=2.0)
    fitted = distillation_model(student, teacher, settings, teacher_outputs=outputs)
    fitted(x, training=True)
    [loss] = fitted.losses
    s = classifier_logits(student)(x).numpy().astype("float64")
    p, q = _softmax(t / 2.0), _softmax(s / 2.0)
    expected = 0.7 * np.mean(2.0**2 * (p * np.log(p / q)).sum(axis=-1))
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    # The cached logits are the teacher's, up to a constant per example (which softmax ignores).
    cached = teacher_logits_of(teacher, tf.data.Dataset.from_tensor_slices(x).batch(4),
                               teacher_outputs=outputs)
    offset = cached - t
    np.testing.assert_allclose(offset - offset.mean(axis=-1, keepdims=True), 0, atol=1e-4)
    if head in ("logits", "softmax_layer", "softmax_activation"):
        # The last layer shows what these output: no batch needed.
        again = distillation_model(_mlp(seed=1, name="student"), teacher, settings)
        again(x, training=True)
        assert float(again.losses[0]) == pytest.approx(float(loss), rel=1e-6)


def _refusal(call, *args, **kwargs) -> str:
    with pytest.raises(BnnError) as err:
        call(*args, **kwargs)
    return str(err.value)


def test_a_teacher_whose_outputs_cannot_be_read_is_refused():
    x = np.random.default_rng(9).normal(size=(4, 64)).astype("float32")
    settings = DistillSettings()
    op_teacher = _teacher("softmax_op")
    last = op_teacher.layers[-1].name
    assert _refusal(distillation_model, _mlp(seed=1), op_teacher, settings) == (
        f"The teacher 'softmax_op_teacher' ends in layer {last!r} (TFOpLambda), which does not "
        "show whether it outputs logits or probabilities; give `teacher_outputs` ('logits' or "
        "'probabilities'; `check_teacher_outputs(teacher, images)` tells them apart on a "
        "batch), or end the teacher with a linear or softmax layer.")
    assert _refusal(teacher_logits_of, op_teacher, x).startswith(
        "The teacher 'softmax_op_teacher' ends in layer")
    assert _refusal(distillation_model, _mlp(seed=1), _teacher("logits"), settings,
                    teacher_outputs="probabilities") == (
        "The teacher 'logits_teacher' ends in layer 'z', which outputs logits; "
        "`teacher_outputs` 'probabilities' contradicts it: drop `teacher_outputs`.")
    assert _refusal(distillation_model, _mlp(seed=1), op_teacher, settings,
                    teacher_outputs="probs") == (
        "Unknown `teacher_outputs` 'probs'; expected one of: logits, probabilities.")

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((64,))
    sigmoid = tf.keras.Model(inputs, tf.keras.layers.Dense(10, activation="sigmoid",
                                                           name="multi_label")(inputs),
                             name="tagger")
    message = ("The teacher 'tagger' ends in layer 'multi_label' with the 'sigmoid' "
               "activation, which outputs neither logits nor softmax probabilities; distil "
               "from a classifier whose last layer is linear (logits) or a softmax.")
    assert _refusal(distillation_model, _mlp(seed=1), sigmoid, settings) == message
    assert _refusal(check_teacher_outputs, sigmoid, x) == message

    assert _refusal(check_teacher_outputs, _teacher("logits"), x[:, :32]) == (
        "The teacher 'logits_teacher' takes inputs of shape (64,), the images are (32,); train "
        "or export the teacher at the student's input size.")

    broken = _teacher("logits")
    weights = broken.get_layer("hidden").get_weights()
    broken.get_layer("hidden").set_weights([np.full_like(weights[0], np.nan), weights[1]])
    assert _refusal(check_teacher_outputs, broken, x) == (
        "The teacher 'logits_teacher' outputs nan or inf on a batch of the images it is to "
        "label; distil from a teacher whose outputs are finite (evaluate it alone first).")


def test_a_teacher_that_does_not_fit_is_refused():
    with pytest.raises(BnnError, match="The teacher has 5 classes, the student 10"):
        distillation_model(_mlp(10), _mlp(5), DistillSettings())


def _noisy_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:1200], order[1200:]
    noisy = y[train].copy()
    flip = rng.random(len(noisy)) < 0.6  # 60% of the training labels are wrong
    noisy[flip] = (noisy[flip] + rng.integers(1, 10, flip.sum())) % 10
    return x[train], y[train], noisy, x[test], y[test]


def test_a_teacher_beats_wrong_labels():
    """A small fixed task: the BNN student sees 60%-wrong labels; a float teacher trained on the
    right ones (the distribution loss ignores labels) brings it far above the student alone."""
    x, clean, noisy, x_test, y_test = _noisy_digits()
    teacher = _mlp(name="teacher")
    teacher.compile(tf.keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    teacher.fit(x, clean, epochs=20, batch_size=64, verbose=0)
    assert teacher.evaluate(x_test, y_test, verbose=0)[1] > 0.9

    def student_accuracy(with_teacher: bool) -> float:
        student = _mlp(binary=True, seed=1, name="student")
        fitted = (distillation_model(student, teacher, DistillSettings.for_loss("distribution"))
                  if with_teacher else student)
        fitted.compile(tf.keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                       loss_weights=[0.0] if with_teacher else None, metrics=["accuracy"])
        fitted.fit(x, noisy, epochs=15, batch_size=64, verbose=0)
        # The student itself (the layers trained in place), evaluated on clean test labels.
        student.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return student.evaluate(x_test, y_test, verbose=0)[1]

    alone, taught = student_accuracy(False), student_accuracy(True)
    assert taught > 0.85 and taught > alone + 0.15, (alone, taught)


def test_the_teacher_is_frozen_and_skipped_in_evaluation():
    x = np.random.default_rng(3).normal(size=(32, 64)).astype("float32")
    y = np.arange(32) % 10
    teacher, student = _mlp(name="teacher"), _mlp(seed=1, name="student")
    before = [w.copy() for w in teacher.get_weights()]
    fitted = distillation_model(student, teacher, DistillSettings.for_loss("kl"))
    assert [w.name for w in fitted.trainable_weights] == \
        [w.name for w in student.trainable_weights]
    fitted.compile(tf.keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                   loss_weights=[0.5])
    fitted.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Evaluation: only the labels' loss (x its weight), no distillation term.
    hard = tf.keras.losses.SparseCategoricalCrossentropy()(y, student(x)).numpy()
    assert fitted.evaluate(x, y, verbose=0, batch_size=32) == pytest.approx(0.5 * hard, rel=1e-4)


def test_cached_teacher_logits_give_the_loss_of_the_teacher_run_at_every_step():
    x = np.random.default_rng(4).normal(size=(16, 64)).astype("float32")
    y = np.arange(16) % 10
    teacher = _mlp(name="teacher")
    settings = DistillSettings.for_loss("kl", weight=0.7, temperature=2.0)
    logits = teacher_logits_of(teacher, tf.data.Dataset.from_tensor_slices(x).batch(5))
    np.testing.assert_allclose(logits, classifier_logits(teacher, role="teacher")(x).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert logits.shape == (16, 10) and logits.dtype == np.float32

    losses = []
    for cached in (False, True):
        student = _mlp(seed=1, name="student")
        fitted = (cached_distillation_model(student, settings) if cached else
                  distillation_model(student, teacher, settings))
        fitted.compile(tf.keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy",
                       loss_weights=[settings.hard_label_weight])
        inputs = (x, logits) if cached else x
        losses.append(fitted.train_on_batch(inputs, y))
        # Evaluation reads no teacher logits: zeros give the labels' loss alone.
        hard = tf.keras.losses.SparseCategoricalCrossentropy()(y, student(x)).numpy()
        evaluated = fitted.evaluate((x, np.zeros_like(logits)) if cached else x, y, verbose=0,
                                    batch_size=16)
        assert evaluated == pytest.approx(0.3 * hard, rel=1e-5)
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert [w.name for w in fitted.weights] == [w.name for w in student.weights]

    with pytest.raises(BnnError, match=r"^Attention matching needs the teacher's feature maps"):
        cached_distillation_model(_mlp(), DistillSettings.for_loss(
            "kl", attention_layers=["dense"]))


# Real-to-Binary's attention matching (larq-zoo's AttentionMatchingLossLayer).

def _np_attention_map(a):
    q = (a.astype("float64") ** 2).mean(axis=-1).reshape(len(a), -1)
    return q / q.max(axis=-1, keepdims=True)


def test_attention_map_and_loss_are_the_zoo_formula():
    rng = np.random.default_rng(4)
    teacher = [rng.normal(size=(3, 4, 4, 5)), rng.normal(size=(3, 2, 2, 6))]
    student = [rng.normal(size=(3, 4, 4, 2)), rng.normal(size=(3, 2, 2, 6))]
    as_tf = [[tf.constant(a, tf.float32) for a in maps] for maps in (teacher, student)]
    q = attention_map(as_tf[0][0]).numpy()
    assert q.shape == (3, 16)
    np.testing.assert_allclose(q, _np_attention_map(teacher[0]), rtol=1e-5)
    np.testing.assert_allclose(q.max(axis=-1), 1.0)
    # Per example: the mean over layers of the mean squared difference of the maps.
    expected = np.mean([((_np_attention_map(s) - _np_attention_map(t)) ** 2).mean(axis=-1)
                        for t, s in zip(teacher, student)], axis=0)
    got = attention_loss(*as_tf).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    layer = AttentionMatching(30.0, ["a", "b"])
    assert float(layer(as_tf)) == pytest.approx(30.0 * expected.mean(), rel=1e-5)
    # An all-zero map (a dead ReLU block) is all zeros, not NaN.
    np.testing.assert_array_equal(attention_map(tf.zeros((2, 3, 3, 4))).numpy(), 0.0)


def test_attention_loss_is_scale_invariant_and_pulls_the_student_to_the_teacher():
    rng = np.random.default_rng(5)
    t = tf.constant(rng.normal(size=(4, 6, 6, 8)), tf.float32)
    # Proportional feature maps (any scale, any sign) have the same attention: no loss.
    for scale in (0.01, 1.0, -7.0):
        np.testing.assert_allclose(attention_loss([t], [scale * t]).numpy(), 0.0, atol=1e-10)
    s = tf.Variable(rng.normal(size=(4, 6, 6, 8)), dtype=tf.float32)
    before = attention_loss([t], [s]).numpy()
    assert (before > 1e-3).all()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(attention_loss([t], [s]))
    gradient = tape.gradient(loss, s)
    s.assign_sub(1.0 * gradient)  # one SGD step lowers it, for every example
    assert (attention_loss([t], [s]).numpy() < before).all()
    # No gradient reaches the teacher's maps.
    teacher = tf.Variable(t)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(attention_loss([teacher], [s]))
    assert tape.gradient(loss, teacher) is None


def test_attention_matching_config_round_trip():
    layer = AttentionMatching(12.5, ("block_2_out", "block_3_out"), name="att")
    config = layer.get_config()
    assert (config["weight"], config["layers"], config["name"]) == (
        12.5, ["block_2_out", "block_3_out"], "att")
    again = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert type(again) is AttentionMatching and again.get_config() == config
    maps = [[tf.ones((2, 3, 3, 4))], [tf.random.normal((2, 3, 3, 4), seed=1)]]
    assert float(again(maps)) == pytest.approx(float(layer(maps)))


def test_attention_settings():
    settings = DistillSettings.for_loss("kl", attention_layers=["block_2_out", "block_3_out"])
    assert (settings.attention_weight, settings.attention_layers) == (
        30.0, ("block_2_out", "block_3_out"))
    assert DistillSettings.for_loss("distribution", attention_weight=3.0,
                                    attention_layers=("x",)).attention_weight == 3.0
    assert DistillSettings.for_loss("kl").attention_weight == 0.0
    assert DistillSettings(attention_weight=1.0, attention_layers="a, b").attention_layers == \
        ("a", "b")
    for kwargs, message in [
        (dict(attention_weight=-1.0, attention_layers=["x"]),
         "Expected `distill_attention_weight` >= 0 and finite, got -1.0."),
        (dict(attention_weight=30.0),
         "Attention matching needs the layers whose feature maps it matches; give "
         "`distill_attention_layers` too (e.g. block_2_out,block_3_out), or drop "
         "`distill_attention_weight`."),
        (dict(attention_layers=["a", ""]),
         "Expected `distill_attention_layers` to be layer names separated by commas, got 'a,'."),
    ]:
        with pytest.raises(BnnError) as err:
            DistillSettings.for_loss("kl", **kwargs)
        assert str(err.value) == message


def _cnn(seed, name, *, pool=False, filters=6):
    """conv1 (8x8) -> conv2 (8x8, or 4x4 with `pool`) -> GAP -> dense -> softmax."""
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    if pool:
        x = tf.keras.layers.MaxPool2D(name="pool")(x)
    x = tf.keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv2")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = tf.keras.layers.Dense(10, name="dense")(x)
    return tf.keras.Model(inputs, tf.keras.layers.Activation("softmax")(x), name=name)


def test_attention_term_is_added_while_training_only():
    """The fitted model's losses are the soft targets plus the attention term at the named
    layers (the teacher's maps from its own layers of those names); evaluation adds none."""
    x = np.random.default_rng(6).normal(size=(8, 8, 8, 1)).astype("float32")
    student, teacher = _cnn(0, "student", filters=3), _cnn(1, "teacher")
    settings = DistillSettings.for_loss("kl", attention_weight=7.0,
                                        attention_layers=["conv2", "conv1"])
    fitted = distillation_model(student, teacher, settings)
    fitted(x, training=True)
    soft, attention = [float(v) for v in fitted.losses]

    def outputs(model, names):
        return tf.keras.Model(model.inputs, [model.get_layer(n).output for n in names])(x)

    t_logits, *t_maps = outputs(teacher, ["dense", "conv2", "conv1"])
    s_logits, *s_maps = outputs(student, ["dense", "conv2", "conv1"])
    expected_soft = 0.5 * np.mean(soft_target_loss(t_logits, s_logits, 4.0).numpy())
    expected = 7.0 * np.mean([((_np_attention_map(s.numpy()) - _np_attention_map(t.numpy()))
                               ** 2).mean(axis=-1) for t, s in zip(t_maps, s_maps)])
    assert soft == pytest.approx(expected_soft, rel=1e-4)
    assert attention == pytest.approx(expected, rel=1e-4)
    fitted(x, training=False)
    assert fitted.losses == []
    # The student's own layers, and nothing else, are trained.
    assert [w.name for w in fitted.trainable_weights] == \
        [w.name for w in student.trainable_weights]


def test_attention_layers_that_do_not_fit_are_refused():
    student = _cnn(0, "student")

    def refused(teacher, *layers):
        with pytest.raises(BnnError) as err:
            distillation_model(student, teacher, DistillSettings.for_loss(
                "kl", attention_layers=layers))
        return str(err.value)

    assert refused(_cnn(1, "teacher"), "conv1", "conv9") == (
        "The student 'student' has no layer 'conv9' to match attention at; give "
        "`distill_attention_layers` that both the student and the teacher have (`bnn summary` "
        "lists a model's layers).")
    assert refused(_cnn(1, "teacher", pool=True), "pool").startswith(
        "The student 'student' has no layer 'pool'")
    assert refused(_cnn(1, "teacher", pool=True), "conv1", "conv2") == (
        "Layer 'conv2' outputs 8x8 feature maps in the student and 4x4 in the teacher; "
        "attention matching needs the same spatial size at each of "
        "`distill_attention_layers`.")
    assert refused(_cnn(1, "teacher"), "gap") == (
        "Layer 'gap' of the student outputs shape (6,), not feature maps (height, width, "
        "channels); give `distill_attention_layers` of convolutional blocks.")
