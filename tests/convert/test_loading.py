"""Loading larq model files made elsewhere: custom objects, model subclasses that cannot be
imported (larq-zoo's `BinaryDenseNet`), and load errors that keep their cause whole.

larq-zoo cannot be installed beside bnn, so its file shapes are reproduced here: a
`tf.keras.Model` subclass built from inputs and outputs (as the zoo's DenseNets are), and a
blur-pool DepthwiseConv2D whose initializer is a plain function (as QuickNet's transition
blocks are, `larq_zoo/sota/quicknet.py`).
"""

import json
import os
import subprocess
import sys
import textwrap

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.errors import BnnError
from convert import loading
from tests.conftest import REPO_ROOT, invoke


class ZooDenseNet(tf.keras.Model):
    """Like larq-zoo's `BinaryDenseNet`: a subclass with no code of its own, whose instances
    are built from inputs and outputs, so it saves a functional config under its own name."""


class ZooSubclassed(tf.keras.Model):
    """A real subclassed model: its graph is in `call`, its config holds no layers."""

    def __init__(self, units: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.head = tf.keras.layers.Dense(units)

    def call(self, inputs):
        return self.head(inputs)

    def get_config(self):
        return {"units": self.units}


def blurpool_initializer(shape, dtype=None):
    """QuickNet's anti-aliasing kernel (Zhang, "Making Convolutional Networks Shift-Invariant
    Again", ICML 2019): a normalized [1, 2, 1] outer product per channel."""
    k = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0])
    k = np.repeat((k / k.sum())[..., None], shape[2], axis=-1)
    return np.reshape(k, shape).astype("float32")


# The module a user hands to --custom-objects: importing it registers the initializer, as
# larq-zoo's own module does (zoo_objects.py, imported only in a child process: registration
# is global), or it offers the dict form (zoo_objects_dict.py).
OBJECTS_MODULE = textwrap.dedent('''
    import larq as lq
    import numpy as np

    @REGISTER
    def blurpool_initializer(shape, dtype=None):
        k = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0])
        k = np.repeat((k / k.sum())[..., None], shape[2], axis=-1)
        return np.reshape(k, shape).astype("float32")

    OBJECTS = {"blurpool_initializer": blurpool_initializer}
''')


def _dense_net_like():
    inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="bn")(x)
    y = lq.layers.QuantConv2D(8, 3, padding="same", input_quantizer="ste_sign",
                              kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                              use_bias=False, name="bconv")(x)
    x = tf.keras.layers.concatenate([x, y], name="concat")
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = tf.keras.layers.Dense(4, name="head")(x)
    return ZooDenseNet(inputs=inputs, outputs=outputs, name="binary_densenet_tiny")


def _quicknet_transition_like():
    inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = tf.keras.layers.DepthwiseConv2D(3, depthwise_initializer=blurpool_initializer,
                                        padding="same", strides=2, trainable=False,
                                        use_bias=False, name="blurpool")(x)
    x = lq.layers.QuantConv2D(8, 1, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                              use_bias=False, name="bconv")(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(4, name="head")(x), name="quicknet_tiny")


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    """The models above saved as .h5 and .keras, an input batch and their outputs on it."""
    folder = tmp_path_factory.mktemp("zoo")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    np.save(folder / "x.npy", x)
    dense, quick = _dense_net_like(), _quicknet_transition_like()
    for model in (dense, quick):  # weights that no initializer gives, to see they are loaded
        model.set_weights([rng.normal(size=w.shape).astype("float32")
                           for w in model.get_weights()])
    subclassed = ZooSubclassed(name="zoo_subclassed")
    subclassed(np.zeros((1, 5), "float32"))
    for suffix in ("h5", "keras"):
        dense.save(folder / f"dense.{suffix}")
        quick.save(folder / f"quick.{suffix}")
    subclassed.save(folder / "subclassed.keras")
    (folder / "zoo_objects.py").write_text(
        OBJECTS_MODULE.replace("REGISTER", "lq.utils.register_keras_custom_object"))
    (folder / "zoo_objects_dict.py").write_text(
        OBJECTS_MODULE.replace("@REGISTER", "# not registered"))
    return {"folder": folder, "x": x, "dense": dense.predict(x, verbose=0),
            "quick": quick.predict(x, verbose=0),
            "blur": quick.get_layer("blurpool").get_weights()[0]}


# Loads the files in a process where the test module, so the classes, cannot be imported.
_CHILD = textwrap.dedent('''
    import json, sys
    sys.modules[{module!r}] = None  # "import {module}" now raises ImportError
    import numpy as np
    from bnn_keras.errors import BnnError
    from convert.loading import load_trained_model

    x = np.load("x.npy")
    report = {{}}
    for name in ("dense.h5", "dense.keras", "subclassed.keras"):
        try:
            loaded = load_trained_model(name)
        except BnnError as exc:
            report[name] = {{"error": str(exc)}}
            continue
        report[name] = {{"class": type(loaded.model).__name__,
                        "rebuilt": list(loaded.rebuilt_classes),
                        "output": loaded.model.predict(x, verbose=0).tolist()}}
    print("REPORT" + json.dumps(report))
''')


def test_subclass_that_cannot_be_imported_loads_as_its_functional_graph(zoo_files):
    folder = zoo_files["folder"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD.format(module=ZooDenseNet.__module__)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.split("REPORT", 1)[1])
    for name in ("dense.h5", "dense.keras"):
        assert report[name].get("rebuilt") == ["ZooDenseNet"], report[name]
        assert report[name]["class"] == "Functional"
        # The file's weights, in the right layers: the same outputs as the saved model.
        np.testing.assert_allclose(report[name]["output"], zoo_files["dense"], rtol=1e-5,
                                   atol=1e-5)
    # A subclass with its own `call` saved no graph: refused, saying how to re-save it.
    error = report["subclassed.keras"]["error"]
    assert "\n" not in error
    assert "Could not deserialize class 'ZooSubclassed'" in error
    assert "tf.keras.Model(m.inputs, m.outputs).save(" in error
    assert "`custom_objects`" in error


def test_missing_custom_initializer_is_named_whole_and_custom_objects_load_it(zoo_files):
    folder = zoo_files["folder"]
    causes = {"h5": "Unknown function: 'blurpool_initializer' (in a DepthwiseConv2D)",
              "keras": "Unknown initializer: 'blurpool_initializer'"}
    for suffix, cause in causes.items():
        path = folder / f"quick.{suffix}"
        with pytest.raises(BnnError) as info:
            loading.load_trained_model(str(path))
        message = str(info.value)
        assert message == (f"Could not load {path} as a Keras model ({cause}); pass the module "
                           f"that defines 'blurpool_initializer' with `custom_objects` (MODULE, "
                           f"MODULE:DICT or a .py file).")
        # The initializer given: the model loads with the file's weights, not re-initialized.
        loaded = loading.load_trained_model(
            str(path), custom_objects={"blurpool_initializer": blurpool_initializer})
        np.testing.assert_array_equal(loaded.model.get_layer("blurpool").get_weights()[0],
                                      zoo_files["blur"])
        np.testing.assert_allclose(loaded.model.predict(zoo_files["x"], verbose=0),
                                   zoo_files["quick"], rtol=1e-5, atol=1e-5)
        assert loaded.rebuilt_classes == ()


def test_load_error_cause_drops_config_dumps_and_keeps_the_cause():
    wrapped = TypeError(
        "Error when deserializing class 'QuantConv2D' using config={'name': 'bconv', "
        + "'x': 1, " * 400 + "}.\n\nException encountered: Unknown quantizer: 'my_sign'. "
        "Please ensure you are using a `keras.utils.custom_object_scope` and that this object "
        "is included in the scope. See https://www.tensorflow.org/guide/keras/"
        "save_and_serialize#registering_the_custom_object for details.")
    assert loading.load_error_cause(wrapped) == "Unknown quantizer: 'my_sign' (in a QuantConv2D)"
    located = TypeError("Could not locate class 'BinaryDenseNet'. Make sure custom classes are "
                        "decorated with `@keras.saving.register_keras_serializable()`. Full "
                        "object config: {'module': None, " + "'a': 1, " * 400 + "}")
    assert loading.load_error_cause(located) == "Could not locate class 'BinaryDenseNet'"
    # No wrapper: the whole first line, however long (a cut would hide the end of it).
    long_line = "Unable to open object " + "x" * 300 + " (object 'layer_names' doesn't exist)"
    assert loading.load_error_cause(OSError(long_line + "\nmore context")) == long_line
    assert loading.load_error_cause(ValueError()) == "ValueError"


def test_import_custom_objects_forms_and_errors(zoo_files, monkeypatch):
    folder = zoo_files["folder"]
    monkeypatch.chdir(folder)  # modules are found in the current folder, as `python -m` does
    objects = loading.import_custom_objects(["zoo_objects_dict:OBJECTS"])
    assert list(objects) == ["blurpool_initializer"] and callable(objects["blurpool_initializer"])
    by_file = loading.import_custom_objects([str(folder / "zoo_objects_dict.py") + ":OBJECTS"])
    assert list(by_file) == ["blurpool_initializer"]
    assert loading.import_custom_objects(["json"]) == {}  # a module alone: its import registers
    with pytest.raises(BnnError, match=r"^`custom_objects` module 'no_such_zoo_module' could not "
                                       r"be imported \(ModuleNotFoundError: No module named "
                                       r"'no_such_zoo_module'\)"):
        loading.import_custom_objects(["no_such_zoo_module"])
    with pytest.raises(BnnError, match=r"module 'zoo_objects_dict' has no 'MISSING'"):
        loading.import_custom_objects(["zoo_objects_dict:MISSING"])
    with pytest.raises(BnnError, match=r"'zoo_objects_dict:np' is a module, not a dict"):
        loading.import_custom_objects(["zoo_objects_dict:np"])
    assert tf.keras.utils.get_registered_object("blurpool_initializer") is None
    (folder / "broken_objects.py").write_text("raise RuntimeError('needs larq_zoo')\n")
    with pytest.raises(BnnError, match=r"module 'broken_objects' could not be imported "
                                       r"\(RuntimeError: needs larq_zoo\)"):
        loading.import_custom_objects(["broken_objects"])


def test_cli_custom_objects_for_inspect_summary_and_convert(zoo_files):
    folder = zoo_files["folder"]
    quick = str(folder / "quick.keras")
    # Without the initializer: one line that names it and the option.
    result = invoke(["inspect", quick])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"Error: Could not load {quick} as a Keras model (Unknown initializer: "
        f"'blurpool_initializer'); pass the module that defines 'blurpool_initializer' with "
        f"--custom-objects (MODULE, MODULE:DICT or a .py file)."]
    spec = f"{folder / 'zoo_objects_dict.py'}:OBJECTS"
    for command in ("inspect", "summary"):
        result = invoke([command, quick, "--custom-objects", spec])
        assert result.exit_code in (0, 1), result.output  # inspect exits 1 on lint errors
        assert "Error" not in result.output and "bconv" in result.output + result.stderr
    # The zoo's DenseNet subclass, by its .h5 file (the class is unknown to the .h5 loader).
    result = invoke(["summary", str(folder / "dense.h5")])
    assert result.exit_code == 0, result.output
    assert "bconv" in result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"Note: {folder / 'dense.h5'}'s ZooDenseNet (a tf.keras.Model subclass that cannot be "
        "imported here) was loaded as its functional graph, with the file's weights.")
    result = invoke(["convert", quick, "--custom-objects", "no_such_zoo_module",
                     "-o", str(folder / "quick.tflite")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: --custom-objects module 'no_such_zoo_module' could "
                                    "not be imported")
    assert not (folder / "quick.tflite").exists()


def test_cli_convert_notes_a_subclass_loaded_as_its_functional_graph(zoo_files):
    """`bnn convert` prints the note `bnn inspect`/`bnn summary` print, once the model loaded."""
    folder = zoo_files["folder"]
    note = (f"Note: {folder / 'dense.h5'}'s ZooDenseNet (a tf.keras.Model subclass that cannot "
            "be imported here) was loaded as its functional graph, with the file's weights.")
    result = invoke(["convert", str(folder / "dense.h5"), "--no-metadata",
                     "-o", str(folder / "dense.tflite")])
    assert result.exit_code == 0, result.output
    assert note in result.stderr.splitlines()
    assert (folder / "dense.tflite").is_file()
    # A functional model file (and a run folder) gets no note.
    result = invoke(["convert", str(folder / "quick.h5"), "--no-metadata", "--custom-objects",
                     f"{folder / 'zoo_objects_dict.py'}:OBJECTS",
                     "-o", str(folder / "quick_h5.tflite")])
    assert result.exit_code == 0, result.output
    assert "Note:" not in result.stderr


def test_bnn_custom_objects_module_registers_from_the_current_folder(zoo_files):
    """The installed `bnn` script, run where the user's module is: plain MODULE form."""
    folder = zoo_files["folder"]
    bnn = os.path.join(os.path.dirname(sys.executable), "bnn")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.run([bnn, "summary", "quick.h5", "--custom-objects", "zoo_objects"],
                           cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    assert "bconv" in child.stdout and "blurpool" in child.stdout


# ----------------------------------------------------------------------------------------------
# Model files are data (bnn_keras.model_files): code in a file runs only with --trust-model-code
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lambda_files(tmp_path_factory):
    from tests.lambda_models import save_lambda_models

    folder = tmp_path_factory.mktemp("lambda_cli")
    marker = folder / "MARKER"
    return {"folder": folder, "marker": marker, **save_lambda_models(folder, marker)}


def _refusal(path) -> str:
    return (f"Error: {path} carries code: layer 'evil' (Lambda) holds Python bytecode (a "
            f"`lambda`) as its `function`, which loading would run; bnn reads model files as "
            f"data only. Pass --trust-model-code only if you trust where the file comes from "
            f"(loading it then runs that code), or re-save the model without it.")


def _only_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _file_hashes(folder):
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_command_refuses_a_lambda_model_file_and_never_runs_it(lambda_files):
    folder, marker = lambda_files["folder"], lambda_files["marker"]
    marker.unlink(missing_ok=True)
    before = _file_hashes(folder)
    runs = [(["inspect"], "h5"), (["summary"], "keras"), (["summary"], "saved_model"),
            (["inspect"], "renamed"),
            (["convert", "--no-metadata", "-o", str(folder / "out.tflite")], "h5")]
    for command, kind in runs:
        path = lambda_files[kind]
        result = invoke([command[0], str(path), *command[1:]])
        assert _only_error_line(result) == _refusal(path), (command, kind)
        assert not marker.exists(), (command, kind)
    assert _file_hashes(folder) == before  # no output, no file touched


def test_trust_model_code_loads_a_lambda_model_and_runs_its_code(lambda_files):
    marker = lambda_files["marker"]
    # summary's table lists the layer; inspect names the model it found nothing in.
    for command, kind, shown in (("summary", "h5", "evil"), ("inspect", "keras", "with_lambda")):
        marker.unlink(missing_ok=True)
        result = invoke([command, str(lambda_files[kind]), "--trust-model-code"])
        assert result.exit_code == 0, result.output
        assert shown in result.output
        assert marker.exists(), (command, kind)  # the flag is what let it run
    marker.unlink(missing_ok=True)
    help_text = invoke(["convert", "--help"]).output
    assert "--trust-model-code" in help_text and "Lambda" in help_text


def test_load_trained_model_refuses_code_unless_trusted(lambda_files):
    marker = lambda_files["marker"]
    marker.unlink(missing_ok=True)
    with pytest.raises(BnnError, match=r"carries code: layer 'evil' \(Lambda\)"):
        loading.load_trained_model(str(lambda_files["h5"]))
    assert not marker.exists()
    loaded = loading.load_trained_model(str(lambda_files["h5"]), trust_model_code=True)
    assert loaded.model.get_layer("evil") is not None and marker.exists()
    marker.unlink()


def test_cli_names_files_that_are_no_model(tmp_path):
    """Random bytes and truncated downloads: one line naming the file, no Internal error."""
    good = tmp_path / "good.keras"
    _quicknet_transition_like().save(good)
    (tmp_path / "random.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    data = good.read_bytes()
    (tmp_path / "truncated.keras").write_bytes(data[: len(data) // 2])
    before = _file_hashes(tmp_path)
    line = _only_error_line(invoke(["inspect", str(tmp_path / "random.h5")]))
    assert line == (f"Error: Could not load {tmp_path / 'random.h5'} as a Keras model (its bytes "
                    f"are neither a .keras zip nor HDF5); give a .keras or .h5 model file or a "
                    f"SavedModel folder.")
    line = _only_error_line(invoke(["convert", str(tmp_path / "truncated.keras"),
                                    "--no-metadata"]))
    assert line == (f"Error: Could not load {tmp_path / 'truncated.keras'} as a Keras model (a "
                    f"damaged zip archive: its end is missing, a truncated or incomplete "
                    f"download); save or download it again.")
    assert _file_hashes(tmp_path) == before


class UnregisteredBlock(tf.keras.layers.Layer):
    """A user's layer that no registration or --custom-objects makes known."""

    def call(self, inputs):
        return inputs


def test_unregistered_layer_class_is_named_instead_of_str_not_callable(tmp_path):
    inputs = tf.keras.Input((4,))
    outputs = UnregisteredBlock(name="block")(tf.keras.layers.Dense(2, name="head")(inputs))
    path = tmp_path / "custom.keras"
    # Loading it, tf-keras itself said "'str' object is not callable".
    tf.keras.Model(inputs, outputs).save(path)
    line = _only_error_line(invoke(["summary", str(path)]))
    assert line == (f"Error: Could not load {path}: unknown layer class 'UnregisteredBlock' "
                    "(layer 'block'); pass the module that defines it with --custom-objects "
                    "(MODULE, MODULE:DICT or a .py file).")
    loaded = loading.load_trained_model(str(path),
                                        custom_objects={"UnregisteredBlock": UnregisteredBlock})
    assert isinstance(loaded.model.get_layer("block"), UnregisteredBlock)


def test_custom_objects_that_call_sys_exit_are_named(tmp_path, monkeypatch):
    script = tmp_path / "exits.py"
    script.write_text("import sys\nsys.exit(3)\n")
    result = invoke(["summary", "binarynet", "--custom-objects", str(script)])
    assert _only_error_line(result) == (
        f"Error: --custom-objects module {str(script)!r} called sys.exit(3) while being "
        "imported; give a module that only defines (or registers) the model's objects, with "
        "any script code under `if __name__ == \"__main__\":`.")
    monkeypatch.chdir(tmp_path)  # the MODULE form, found in the current folder
    with pytest.raises(BnnError, match=r"^`custom_objects` module 'exits' called sys.exit\(3\)"):
        loading.import_custom_objects(["exits"])
    assert "exits" not in sys.modules
