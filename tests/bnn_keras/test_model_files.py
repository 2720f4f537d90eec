"""bnn_keras.model_files: model files are data, and a file that is no model says so in one line.

tf-keras 2.16 runs a Lambda layer's marshalled bytecode when it loads a legacy .h5 file or a
SavedModel folder (its safe mode covers .keras archives only), and loads any file that is not a
.keras zip as HDF5. The files here carry a lambda that writes a marker file when it runs: every
load without trust must refuse them and leave no marker.
"""

import json
import zipfile

import bnn_keras  # noqa: F401  (must precede tensorflow)
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import model_files
from bnn_keras.errors import BnnError
from tests.lambda_models import FORMATS, save_lambda_models

REFUSED = ("{path} carries code: layer 'evil' (Lambda) holds Python bytecode (a `lambda`) as its "
           "`function`, which loading would run; bnn reads model files as data only. Pass "
           "`trust_model_code` only if you trust where the file comes from (loading it then "
           "runs that code), or re-save the model without it.")


@pytest.fixture(scope="module")
def lambda_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lambda")
    marker = folder / "MARKER"
    return {"marker": marker, **save_lambda_models(folder, marker)}


@pytest.fixture
def marker(lambda_files):
    """The marker path, absent when the test starts (a trusting test leaves one behind)."""
    lambda_files["marker"].unlink(missing_ok=True)
    yield lambda_files["marker"]
    lambda_files["marker"].unlink(missing_ok=True)


@pytest.mark.parametrize("kind", FORMATS)
def test_a_lambda_is_refused_in_every_format_and_never_runs(lambda_files, marker, kind):
    path = lambda_files[kind]
    with pytest.raises(model_files.ModelCodeError) as info:
        model_files.load_model_file(path)
    assert str(info.value) == REFUSED.format(path=path)
    assert (info.value.layer, info.value.class_name) == ("evil", "Lambda")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["h5", "keras", "saved_model"])
def test_trusted_files_load_and_run_their_code(lambda_files, marker, kind):
    model = model_files.load_model_file(lambda_files[kind], trust_model_code=True)
    assert [layer.name for layer in model.layers][-1] == "evil"
    assert marker.exists()  # the lambda ran: trust is what lets it


def test_a_trusting_scope_is_the_default_of_the_calls_inside_it(lambda_files, marker):
    with model_files.trusting_model_code():
        assert model_files.model_code_trusted()
        model_files.load_model_file(lambda_files["h5"])
        with pytest.raises(model_files.ModelCodeError):  # an explicit False wins
            model_files.load_model_file(lambda_files["h5"], trust_model_code=False)
    assert not model_files.model_code_trusted()
    with pytest.raises(model_files.ModelCodeError):
        model_files.load_model_file(lambda_files["h5"])


def test_keras_safe_mode_backs_up_the_scan(lambda_files, marker, monkeypatch):
    """Were the scan to miss a lambda, the load still runs in Keras's safe mode, which tf-keras
    itself sets only for .keras archives."""
    monkeypatch.setattr(model_files, "find_code", lambda stored: None)
    path = lambda_files["h5"]
    with pytest.raises(BnnError) as info:
        model_files.load_model_file(path)
    assert str(info.value).startswith(f"{path} carries code (a Python `lambda`) that loading "
                                      "would run;")
    assert not marker.exists()
    # A SavedModel's Lambda refused in safe mode is revived from its traced graph instead: it
    # computes what it computed when saved, and its Python code does not run.
    model = model_files.load_model_file(lambda_files["saved_model"])
    assert not isinstance(model.get_layer("evil"), tf.keras.layers.Lambda)
    assert model(np.ones((1, 4), "float32")).shape == (1, 3)
    assert not marker.exists()


def _layer(class_name, name, **config):
    return {"class_name": class_name, "config": {"name": name, **config}, "name": name}


def _functional(*layers):
    return {"class_name": "Functional", "config": {"name": "m", "layers": list(layers),
                                                    "input_layers": [], "output_layers": []}}


def test_find_code_names_each_kind_of_code_and_passes_plain_layers():
    def found(config):
        return model_files.find_code(model_files.StoredConfig("h5", config, (config,)))

    plain = _functional(
        _layer("Dense", "head", units=3, activation="relu"),
        # What Keras makes of `x * 2` on a KerasTensor: a TF op by name, not Python code.
        _layer("TFOpLambda", "tf.math.multiply", function="math.multiply"))
    assert found(plain) is None
    # A Lambda that names a Python function (.keras form) is a call chosen by the file.
    named = _functional(_layer("Lambda", "shell", function_type="function", function={
        "class_name": "function", "module": "subprocess", "config": "getoutput"}))
    assert found(named) == model_files.CodeFinding(
        "shell", "Lambda",
        "a call of the Python function 'getoutput' of module 'subprocess' with the file's "
        "arguments")
    # The .keras format's `__lambda__`, as a Dense activation: the Dense carries it.
    activation = _functional(_layer("Dense", "head", units=3, activation={
        "class_name": "__lambda__", "config": {"value": ["4wEAAA==", None, None]}}))
    assert found(activation) == model_files.CodeFinding("head", "Dense",
                                                        "Python bytecode (a `lambda`)")
    # Any layer (a subclass of Lambda under another name) with marshalled code in a field.
    shape = _functional(_layer("my>Shaper", "shaper", output_shape=["4wEAAA==", None, None],
                               output_shape_type="lambda"))
    assert found(shape) == model_files.CodeFinding(
        "shaper", "my>Shaper", "Python bytecode (a `lambda`) as its `output_shape`")


def test_saved_model_metadata_is_read_from_the_protobuf(lambda_files, tmp_path):
    stored = model_files.stored_config(lambda_files["saved_model"])
    assert stored.kind == "saved_model" and stored.model_config is None
    classes = {tree.get("class_name") for tree in stored.trees}
    assert {"Functional", "Dense", "Lambda"} <= classes
    # A SavedModel of TF < 2.5 has no keras_metadata.pb: each object's metadata is in
    # saved_model.pb (SavedUserObject.metadata), written here with TensorFlow's own protos.
    from tensorflow.core.protobuf import saved_model_pb2

    lambda_metadata = next(tree for tree in stored.trees if tree.get("class_name") == "Lambda")
    proto = saved_model_pb2.SavedModel()
    graph = proto.meta_graphs.add()
    graph.meta_info_def.tags.append("serve")
    for metadata in ({"class_name": "Dense", "config": {"name": "dense"}}, lambda_metadata):
        node = graph.object_graph_def.nodes.add()
        node.user_object.identifier = "_tf_keras_layer"
        node.user_object.metadata = json.dumps(metadata)
    old = tmp_path / "old_saved_model"
    old.mkdir()
    (old / "saved_model.pb").write_bytes(proto.SerializeToString())
    legacy = model_files.stored_config(old)
    assert [tree["class_name"] for tree in legacy.trees] == ["Dense", "Lambda"]
    with pytest.raises(model_files.ModelCodeError, match=r"layer 'evil' \(Lambda\) holds Python "
                                                          r"bytecode"):
        model_files.load_model_file(old)


@pytest.fixture(scope="module")
def plain_files(tmp_path_factory):
    """A Dense model as .h5 and .keras, its save_weights file, and broken copies of them."""
    folder = tmp_path_factory.mktemp("plain")
    inputs = tf.keras.Input((4,))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(3, name="dense")(inputs))
    model.save(folder / "plain.h5")
    model.save(folder / "plain.keras")
    model.save_weights(folder / "weights.h5")
    rng = np.random.default_rng(0)
    (folder / "random.h5").write_bytes(rng.bytes(2048))
    (folder / "random.keras").write_bytes(rng.bytes(2048))
    (folder / "empty.h5").write_bytes(b"")
    for name in ("plain.h5", "plain.keras"):
        data = (folder / name).read_bytes()
        (folder / f"truncated_{name}").write_bytes(data[: len(data) // 2])
    (folder / "zipped.h5").write_bytes((folder / "plain.keras").read_bytes())
    with zipfile.ZipFile(folder / "no_config.keras", "w") as archive:
        archive.writestr("metadata.json", "{}")
    (folder / "no_saved_model").mkdir()
    return folder


def test_files_that_are_no_model_get_one_line_naming_them(plain_files):
    f = plain_files
    expected = {
        "random.h5": "(its bytes are neither a .keras zip nor HDF5); give a .keras or .h5 model "
                     "file or a SavedModel folder.",
        "random.keras": "(its bytes are neither a .keras zip nor HDF5); give a .keras or .h5 "
                        "model file or a SavedModel folder.",
        "empty.h5": "(the file is empty); give a .keras or .h5 model file or a SavedModel "
                    "folder.",
        "truncated_plain.keras": "(a damaged zip archive: its end is missing, a truncated or "
                                 "incomplete download); save or download it again.",
        "weights.h5": "(it holds weights but no model config: a save_weights file?); give a "
                      "model saved with model.save(), or build the model and load these "
                      "weights into it.",
        "zipped.h5": "(a zip archive, which Keras reads as a model only under a .keras name); "
                     "rename it to zipped.keras.",
        "no_config.keras": "(a zip archive without config.json); give a file saved with "
                           "model.save('....keras').",
        "no_saved_model": "(a folder without saved_model.pb); give a .keras or .h5 model file "
                          "or a SavedModel folder.",
    }
    for name, rest in expected.items():
        with pytest.raises(BnnError) as info:
            model_files.load_model_file(f / name)
        assert str(info.value) == f"Could not load {f / name} as a Keras model {rest}", name
    with pytest.raises(BnnError) as info:
        model_files.load_model_file(f / "truncated_plain.h5", what="`teacher`")
    assert str(info.value).startswith(
        f"Could not load `teacher` {f / 'truncated_plain.h5'} as a Keras model (a damaged HDF5 "
        "file: truncated file: eof = ")
    assert str(info.value).endswith("); save or download it again.")
    with pytest.raises(BnnError, match="^No such model file or SavedModel folder: "):
        model_files.load_model_file(f / "missing.keras")
    # The intact files load, with the weights they were saved with.
    for name in ("plain.h5", "plain.keras"):
        assert model_files.load_model_file(f / name).get_layer("dense").kernel.shape == (4, 3)


def test_a_damaged_saved_model_metadata_is_named(lambda_files, tmp_path):
    folder = tmp_path / "damaged"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(
        (lambda_files["saved_model"] / "saved_model.pb").read_bytes())
    metadata = (lambda_files["saved_model"] / "keras_metadata.pb").read_bytes()
    (folder / "keras_metadata.pb").write_bytes(metadata[: len(metadata) // 2])
    with pytest.raises(BnnError) as info:
        model_files.load_model_file(folder)
    assert str(info.value).startswith(f"Could not load {folder} as a Keras model (a damaged "
                                      "SavedModel: its Keras metadata cannot be decoded: ")


class Unregistered(tf.keras.layers.Layer):
    """A custom layer that is registered nowhere."""

    def call(self, inputs):
        return inputs


class SubclassOfModel(tf.keras.Model):
    """A functional model subclass, unknown to the .h5 loader (rebuilt as functional)."""


def test_an_unregistered_layer_class_is_named_with_its_layer(tmp_path):
    inputs = tf.keras.Input((4,))
    outputs = Unregistered(name="custom")(tf.keras.layers.Dense(2)(inputs))
    tf.keras.Model(inputs, outputs).save(tmp_path / "plain.h5")
    tf.keras.Model(inputs, outputs).save(tmp_path / "plain.keras")
    # The model's own class unknown too: this one read "'str' object is not callable".
    SubclassOfModel(inputs, outputs).save(tmp_path / "subclass.h5")
    for name in ("plain.h5", "plain.keras", "subclass.h5"):
        with pytest.raises(BnnError) as info:
            model_files.load_model_file(tmp_path / name)
        assert str(info.value) == (
            f"Could not load {tmp_path / name}: unknown layer class 'Unregistered' (layer "
            "'custom'); pass the module that defines it with `custom_objects` (MODULE, "
            "MODULE:DICT or a .py file).")
    loaded = model_files.read_model_file(tmp_path / "subclass.h5",
                                         custom_objects={"Unregistered": Unregistered})
    assert loaded.rebuilt_classes == ("SubclassOfModel",)
    assert isinstance(loaded.model.get_layer("custom"), Unregistered)


def test_the_scan_reads_the_config_without_building_anything(lambda_files, monkeypatch):
    """`stored_config` and `find_code` are data reading: no Keras deserialization at all."""
    def forbidden(*args, **kwargs):
        raise AssertionError("Keras deserialized a config during the scan")

    monkeypatch.setattr(tf.keras.models, "load_model", forbidden)
    monkeypatch.setattr(tf.keras.models, "model_from_config", forbidden)
    monkeypatch.setattr(tf.keras.layers, "deserialize", forbidden)
    for kind in FORMATS:
        found = model_files.find_code(model_files.stored_config(lambda_files[kind]))
        assert found is not None and found.layer == "evil", kind
