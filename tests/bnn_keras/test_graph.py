"""`bnn_keras.graph`: config edits, inserted and replaced layers, weights copied by name, the
refusal of subclassed models; and that a model with int8 `FakeQuant` layers loads back."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import graph
from bnn_keras.errors import BnnError


def small(name="small"):
    """input -> dense (ReLU) -> two consumers (out_a, and relu -> out_b); two outputs."""
    inputs = tf.keras.Input((4,), name="input")
    hidden = tf.keras.layers.Dense(3, activation="relu", name="dense")(inputs)
    out_a = tf.keras.layers.Dense(2, name="out_a")(hidden)
    out_b = tf.keras.layers.Dense(2, name="out_b")(tf.keras.layers.ReLU(name="relu")(hidden))
    model = tf.keras.Model(inputs, [out_a, out_b, hidden], name=name)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape) for w in model.get_weights()])
    return model


X = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)


def _dense(x, layer):
    kernel, bias = layer.get_weights()
    return x @ kernel + bias


def _assert_same_weights(a, b, names):
    for name in names:
        for u, v in zip(a.get_layer(name).get_weights(), b.get_layer(name).get_weights(),
                        strict=True):
            np.testing.assert_array_equal(u, v)


def test_config_edit_rebuilds_with_every_weight_copied_exactly():
    model = small()

    def linear_dense(entry):
        if entry["name"] == "dense":
            entry["config"]["activation"] = "linear"
        return entry

    rebuilt = graph.rebuild(model, edit=linear_dense)
    assert rebuilt is not model and model.get_layer("dense").activation.__name__ == "relu"
    _assert_same_weights(model, rebuilt, ["dense", "out_a", "out_b"])
    hidden = _dense(X, model.get_layer("dense"))  # without the ReLU now
    out_a, out_b, got_hidden = (t.numpy() for t in rebuilt(X))
    np.testing.assert_allclose(got_hidden, hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_a, _dense(hidden, model.get_layer("out_a")),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_b, _dense(np.maximum(hidden, 0), model.get_layer("out_b")),
                               rtol=1e-5, atol=1e-5)


def test_inserted_layer_takes_over_every_consumer_and_output():
    model = small()
    config = model.get_config()
    graph.insert_after(config, "dense", tf.keras.layers.Rescaling(2.0, name="double"))
    assert [e["name"] for e in config["layers"]][:3] == ["input", "dense", "double"]
    assert graph.consumers(config)["dense"] == ["double"]
    assert sorted(graph.consumers(config)["double"]) == ["out_a", "relu"]
    rebuilt = graph.rebuild(model, config)
    hidden = 2 * np.maximum(_dense(X, model.get_layer("dense")), 0)
    out_a, out_b, got_hidden = (t.numpy() for t in rebuilt(X))
    np.testing.assert_allclose(got_hidden, hidden, rtol=1e-5, atol=1e-6)  # the output moved too
    np.testing.assert_allclose(out_a, _dense(hidden, model.get_layer("out_a")),
                               rtol=1e-5, atol=1e-5)
    assert [layer.name for layer in graph.inbound_layers(rebuilt.get_layer("relu"))] == ["double"]
    assert graph.inbound_layers(rebuilt.get_layer("input")) == []


def test_a_removed_layer_hands_its_input_to_every_consumer_and_output():
    inputs = tf.keras.Input((4,))
    hidden = tf.keras.layers.Dense(3, name="hidden")(inputs)
    relu = tf.keras.layers.ReLU(name="relu")(hidden)
    left = tf.keras.layers.Dense(2, name="left")(relu)
    added = tf.keras.layers.Add(name="add")([relu, tf.keras.layers.Dense(3, name="right")(relu)])
    model = tf.keras.Model(inputs, [left, added, relu])
    config = model.get_config()
    graph.remove_layer(config, "relu")
    rebuilt = graph.rebuild(model, config)
    assert "relu" not in [layer.name for layer in rebuilt.layers]
    for name in ("left", "right"):
        assert [p.name for p in graph.inbound_layers(rebuilt.get_layer(name))] == ["hidden"]
    assert [p.name for p in graph.inbound_layers(rebuilt.get_layer("add"))] == ["hidden", "right"]
    x = np.random.RandomState(0).randn(5, 4).astype(np.float32)
    hidden_out = x @ model.get_layer("hidden").kernel.numpy()  # zero bias at initialization
    np.testing.assert_allclose(rebuilt(x)[2].numpy(), hidden_out, rtol=1e-5, atol=1e-6)
    with pytest.raises(BnnError, match="^Cannot remove layer 'add': it is called more than once "
                                       "or on several inputs.$"):
        graph.remove_layer(model.get_config(), "add")


def test_insert_before_feeds_only_that_layer_and_after_an_input_works():
    model = small()
    config = model.get_config()
    graph.insert_before(config, "relu", tf.keras.layers.Rescaling(-1.0, name="negate"))
    graph.insert_after(config, "input", tf.keras.layers.Rescaling(0.5, name="halve"))
    rebuilt = graph.rebuild(model, config)
    hidden = np.maximum(_dense(X / 2, model.get_layer("dense")), 0)
    out_a, out_b, _ = (t.numpy() for t in rebuilt(X))
    np.testing.assert_allclose(out_a, _dense(hidden, model.get_layer("out_a")),
                               rtol=1e-5, atol=1e-5)  # out_a still reads dense itself
    np.testing.assert_allclose(out_b, _dense(np.maximum(-hidden, 0), model.get_layer("out_b")),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(BnnError, match="Cannot add layer 'negate' to model small: it already"):
        graph.insert_after(config, "dense", tf.keras.layers.ReLU(name="negate"))
    with pytest.raises(BnnError, match="Expected a layer named 'nope' in model small"):
        graph.insert_after(config, "nope", tf.keras.layers.ReLU(name="r2"))


def test_a_layer_inserted_after_a_shared_layer_is_called_once_per_call():
    inputs = tf.keras.Input((3,), name="input")
    shared = tf.keras.layers.Dense(3, name="shared")
    model = tf.keras.Model(inputs, tf.keras.layers.Add(name="add")([shared(inputs),
                                                                   shared(-inputs)]))
    config = model.get_config()
    graph.insert_after(config, "shared", tf.keras.layers.Rescaling(3.0, name="triple"))
    rebuilt = graph.rebuild(model, config)
    np.testing.assert_allclose(rebuilt(X[:, :3]).numpy(), 3 * model(X[:, :3]).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_replaced_layers_stay_fresh_and_mismatched_weights_are_refused_or_matched_by_name():
    model = small()
    config = model.get_config()
    graph.replace_layer(config, tf.keras.layers.Dense(3, use_bias=False, name="dense"))
    assert sorted(graph.consumers(config)["dense"]) == ["out_a", "relu"]  # wiring kept
    with pytest.raises(BnnError, match=r"layer 'dense': shapes \[\(4, 3\), \(3,\)\] in model small, "
                                       r"\[\(4, 3\)\] in the rebuilt one"):
        graph.rebuild(model, config)
    fresh = graph.rebuild(model, config, fresh={"dense"})
    assert not np.array_equal(fresh.get_layer("dense").kernel.numpy(),
                              model.get_layer("dense").kernel.numpy())
    _assert_same_weights(model, fresh, ["out_a", "out_b"])
    partial = graph.rebuild(model, config, partial=True)  # the kernel matches by name
    np.testing.assert_array_equal(partial.get_layer("dense").kernel.numpy(),
                                  model.get_layer("dense").kernel.numpy())
    untouched = graph.rebuild(model, weights=False)
    assert not np.array_equal(untouched.get_layer("out_a").kernel.numpy(),
                              model.get_layer("out_a").kernel.numpy())
    other = graph.rebuild(partial, copy_from=fresh)  # weights from another model, by name
    _assert_same_weights(fresh, other, ["dense", "out_a", "out_b"])


def test_sequential_stays_sequential_and_has_a_functional_view():
    sequential = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2, name="d")],
                                     name="seq")
    rebuilt = graph.rebuild(sequential)
    assert type(rebuilt) is tf.keras.Sequential
    _assert_same_weights(sequential, rebuilt, ["d"])
    view = graph.functional(sequential, "the test")
    assert not isinstance(view, tf.keras.Sequential) and view.get_layer("d") is sequential.layers[0]
    functional_model = small()
    assert graph.functional(functional_model, "the test") is functional_model
    with pytest.raises(graph.NotFunctionalError, match="'unbuilt' has no input shape yet"):
        graph.functional(tf.keras.Sequential([tf.keras.layers.Dense(2)], name="unbuilt"), "x")


def test_subclassed_model_is_refused_in_one_line():
    class Subclassed(tf.keras.Model):
        def call(self, x):
            return x

    model = Subclassed(name="sub")
    for rewrite in (lambda: graph.rebuild(model, purpose="the float32 copy"),
                    lambda: graph.functional(model, "the float32 copy")):
        with pytest.raises(BnnError) as error:
            rewrite()
        assert str(error.value) == (
            "Model 'sub' is not a functional Keras model (Subclassed), so the float32 copy "
            "cannot rewrite its layers: build it with tf.keras.Model(inputs, outputs) or "
            "tf.keras.Sequential.")
        assert isinstance(error.value, ValueError)  # what float_equivalent raised before


def test_fake_quant_registers_with_convert_int8_and_a_saved_model_loads_after_it(tmp_path):
    """`import bnn_keras` does not register the int8 FakeQuant layer (it belongs to the
    converter); `import convert.int8` does, and then a model saved with it loads."""
    from convert.int8.fake_quant import FakeQuant, with_fake_quant

    model = small()
    prepared = graph.rebuild(model, with_fake_quant(model.get_config(), ["dense"]))
    prepared.get_layer("dense_fq").set_range(-1.0, 2.0)
    path = tmp_path / "fq.keras"
    prepared.save(path)
    np.save(tmp_path / "x.npy", X)
    code = "\n".join([
        "import sys, numpy as np",
        "import bnn_keras, tensorflow as tf",
        "assert 'bnn_keras>FakeQuant' not in tf.keras.utils.get_custom_objects()",
        "try:",
        f"    tf.keras.models.load_model({str(path)!r})",
        "    sys.exit('loaded without convert.int8')",
        "except (TypeError, ValueError):  # tf-keras: \"'str' object is not callable\"",
        "    pass",
        "import convert.int8",
        "assert tf.keras.utils.get_registered_object('bnn_keras>FakeQuant') is convert.int8.FakeQuant",
        f"loaded = tf.keras.models.load_model({str(path)!r})",
        f"np.save({str(tmp_path / 'y.npy')!r}, loaded(np.load({str(tmp_path / 'x.npy')!r}))[0])",
    ])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert isinstance(prepared.get_layer("dense_fq"), FakeQuant)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), prepared(X)[0].numpy())
