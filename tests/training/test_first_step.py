"""A run traces its train and test steps once each: Keras creates the compiled loss's and
metrics' variables inside the first trace, and a `tf.function` that creates variables is traced
again, so every run paid for its first step twice until they were built beforehand."""

import tensorflow as tf

from bnn_keras import training
from bnn_keras.training.run import build_loss_and_metrics, build_optimizer_slots
from tests.conftest import tiny_bnn, tiny_config


def test_a_run_traces_its_train_and_test_steps_once(tmp_path):
    result = training.train(tiny_config(epochs=2, steps_per_epoch=2), tiny_bnn, tmp_path / "run",
                            verbose=0)
    model = result.model
    assert model.train_function.experimental_get_tracing_count() == 1
    assert model.test_function.experimental_get_tracing_count() == 1
    # Keras' names for the loss and metrics, and the run callbacks' columns, as before.
    assert sorted(result.history) == ["accuracy", "epoch_time_s", "flip_ratio/bconv",
                                      "flip_ratio/total", "loss", "run_time_s", "val_accuracy",
                                      "val_loss"]


def test_what_is_built_beforehand_is_what_keras_builds_at_the_first_step():
    """The optimizer's slots are those `fit` makes, and "accuracy" resolves from the labels'
    and outputs' shapes as Keras resolves it from the first batch: sparse for class indices,
    categorical for one-hot labels."""
    images = tf.zeros((4, 8, 8, 1))
    for labels, expected in ((tf.zeros((4,), tf.int32), "sparse_categorical_accuracy"),
                             (tf.one_hot([0, 1, 2, 3], 4), "categorical_accuracy")):
        built, lazy = (tiny_bnn((8, 8, 1), 4) for _ in range(2))
        loss = ("sparse_categorical_crossentropy" if labels.shape.rank == 1 else
                "categorical_crossentropy")
        for model in (built, lazy):
            model.compile("adam", loss, metrics=["accuracy"])
        build_optimizer_slots(built)
        build_loss_and_metrics(built, tf.data.Dataset.from_tensor_slices((images, labels)).batch(2))
        assert [m.name for m in built.metrics] == ["loss", "accuracy"]
        lazy.fit(images, labels, epochs=1, verbose=0)  # Keras builds them at the first step
        for model in (built, lazy):
            accuracy = model.compiled_metrics.metrics[0]
            assert accuracy._fn.__name__ == expected
        assert ([(v.name, v.shape) for v in built.optimizer.variables] ==
                [(v.name, v.shape) for v in lazy.optimizer.variables])
        assert len(built.optimizer.variables) == 1 + 2 * len(built.trainable_variables)


def test_a_distilled_students_evaluation_builds_no_optimizer(float_teacher_run, tmp_path):
    """After `fit`, a distilled run's student is compiled again for its test accuracy, with
    the optimizer that trained it (so that model.keras carries its state): its test step is
    traced once, and no optimizer slots are made for the evaluation."""
    config = tiny_config(epochs=1, steps_per_epoch=2, teacher=str(float_teacher_run),
                         track_flips=False)
    student = training.train(config, tiny_bnn, tmp_path / "run", verbose=0).model
    assert student.test_function.experimental_get_tracing_count() == 1
    # The trained Adam: its step count and one (m, v) pair per trainable weight, nothing more.
    assert int(student.optimizer.iterations.numpy()) == 2
    assert len(student.optimizer.variables) == 1 + 2 * len(student.trainable_variables)
