"""bnn_keras.optimizers.Adam: tf.keras's Adam bit for bit, with its step's scalars built once."""

import bnn_keras  # noqa: F401  (must precede tensorflow)
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.optimizers import Adam
from bnn_keras.schedules import WarmupDecay
from tests.conftest import tiny_bnn


def _trained(optimizer, steps=3):
    """tiny_bnn (binary kernels behind larq's QuantizedVariable, weight clipping, batch norms)
    after `steps` steps of `fit` with `optimizer`: its weights and the optimizer's variables,
    and its weights before."""
    tf.keras.utils.set_random_seed(3)
    model = tiny_bnn((6, 6, 1), 3)
    initial = [w.numpy() for w in model.weights]
    model.compile(optimizer, "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8 * steps, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, size=8 * steps)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return ([w.numpy() for w in model.weights], [v.numpy() for v in optimizer.variables],
            initial)


@pytest.mark.parametrize("options", [
    dict(learning_rate=3e-2),
    # A schedule (the recipes' WarmupDecay: lr changes every step) and another epsilon.
    dict(learning_rate=WarmupDecay(5e-2, "linear", warmup_steps=2, total_steps=4),
         epsilon=1e-8),
    dict(learning_rate=1e-2, amsgrad=True),  # tf.keras's own update
])
def test_training_is_bit_for_bit_tf_keras_adam(options):
    theirs = _trained(tf.keras.optimizers.Adam(**options))
    ours = _trained(Adam(**options))
    assert len(ours[0]) == len(theirs[0]) and len(ours[1]) == len(theirs[1])
    for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(theirs[0][0], theirs[2][0])  # the steps moved the weights


def _traced_ops(optimizer, variables):
    gradients = [tf.ones_like(v) for v in variables]

    @tf.function
    def step():
        optimizer.apply_gradients(zip(gradients, variables))

    optimizer.build(variables)
    return [op.type for op in step.get_concrete_function().graph.get_operations()]


def test_the_step_builds_its_bias_correction_once_not_per_variable():
    def variables():
        return [tf.Variable(tf.fill((3,), float(i))) for i in range(6)]

    theirs = _traced_ops(tf.keras.optimizers.Adam(1e-3), variables())
    ours = _traced_ops(Adam(1e-3), variables())
    assert theirs.count("Pow") == 2 * 6  # beta_1^t and beta_2^t for each variable
    assert ours.count("Pow") == 2
    assert ours.count("Sqrt") == 1 + 6  # sqrt(1 - beta_2^t) once, sqrt(v) per variable
    assert len(ours) < 0.7 * len(theirs)  # 165 of 245 ops here


def test_two_updates_in_one_traced_step_each_read_their_own_step():
    """The scalars live for one `apply_gradients`: a second call reads `iterations` again."""
    results = []
    for optimizer in (tf.keras.optimizers.Adam(0.1), Adam(0.1)):
        variable = tf.Variable([1.0, -2.0, 3.0])
        optimizer.build([variable])

        @tf.function
        def two_steps():
            optimizer.apply_gradients([(tf.constant([0.5, 1.0, -1.5]), variable)])
            optimizer.apply_gradients([(tf.constant([-0.5, 2.0, 0.25]), variable)])

        two_steps()
        results.append((variable.numpy(), int(optimizer.iterations.numpy())))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1] == 2


def test_sparse_gradients_take_tf_keras_update():
    results = []
    for optimizer in (tf.keras.optimizers.Adam(0.1), Adam(0.1)):
        table = tf.Variable(np.arange(12, dtype="float32").reshape(4, 3))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, [0, 2]) ** 2)
        gradient = tape.gradient(loss, table)
        assert isinstance(gradient, tf.IndexedSlices)
        optimizer.apply_gradients([(gradient, table)])
        results.append(table.numpy())
    np.testing.assert_array_equal(*results)


def test_serializes_as_itself_and_reloads_with_its_state(tmp_path):
    optimizer = Adam(WarmupDecay(1e-3, "cosine", warmup_steps=2, total_steps=10), epsilon=1e-8)
    config = tf.keras.optimizers.serialize(optimizer)
    assert config["registered_name"] == "bnn_keras>Adam"
    again = tf.keras.optimizers.deserialize(config)
    assert type(again) is Adam and again.get_config() == optimizer.get_config()

    model = tiny_bnn((6, 6, 1), 3)
    model.compile(Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(np.zeros((4, 6, 6, 1), "float32"), np.zeros(4), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = tf.keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is Adam
    assert int(loaded.optimizer.iterations.numpy()) == 1
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
