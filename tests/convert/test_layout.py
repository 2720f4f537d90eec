"""The convert package's shape: its public API, no import cycle, one parse per flatbuffer, and
run folders read for deployment without the training application.

A flatbuffer is parsed once (`convert.flatbuffer.Flatbuffer`) and passed along: the CLI tests
count full parses of the TFLite schema's object tree while `bnn evaluate` and `bnn convert` run.
"""

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

from tests.conftest import REPO_ROOT, invoke, tiny_lce_model

CONVERT = REPO_ROOT / "convert"


def _module_name(path: Path) -> str:
    parts = path.relative_to(CONVERT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> Dict[str, Set[str]]:
    """Module -> the convert modules it imports, anywhere in it (function-level imports and
    `TYPE_CHECKING` blocks too: a cycle through them is still a cycle in the design)."""
    modules = {_module_name(path): path for path in CONVERT.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from convert import bundle` names a module, `from convert import X` a value.
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                           else node.module for alias in node.names]
            else:
                continue
            edges |= {target for target in targets if target in modules and target != name}
        graph[name] = edges
    return graph


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules, or [] when the graph is acyclic."""
    state: Dict[str, str] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state:
                found = visit(child)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def _reachable(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen, todo = set(), [start]
    while todo:
        for child in graph[todo.pop()]:
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def test_the_import_graph_of_convert_is_acyclic():
    graph = _import_graph()
    # The walk sees the modules and the edges that once formed a cycle.
    assert {"convert.converter", "convert.int8.prepare", "convert.flatbuffer"} <= set(graph)
    assert "convert.converter" in graph["convert.int8.prepare"]
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]  # the check itself works


def test_evaluation_and_verification_do_not_load_the_int8_machinery():
    graph = _import_graph()
    for module in ("convert.evaluate", "convert.verify", "convert.samples", "convert.isolated"):
        reached = _reachable(graph, module)
        assert not any(name.startswith("convert.int8") for name in reached), (module, reached)
    # One call site of LCE's converter.
    callers = [path.name for path in CONVERT.rglob("*.py")
               if "convert_keras_model(" in path.read_text()]
    assert callers == ["converter.py"]


def test_public_api_from_the_package():
    from convert import ConversionReport, Flatbuffer, VerificationFailedError, convert_model
    from convert import convert_trained_model, load_trained_model

    import convert
    from convert import converter, flatbuffer, report, workflow

    assert convert_model is converter.convert_model
    assert convert_trained_model is workflow.convert_trained_model
    assert Flatbuffer is flatbuffer.Flatbuffer and ConversionReport is report.ConversionReport
    assert issubclass(VerificationFailedError, Exception) and callable(load_trained_model)
    assert all(getattr(convert, name) is not None for name in convert.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        convert.nothing_here  # noqa: B018


def test_importing_convert_loads_no_converter_or_data_code():
    code = ("import sys, convert; print(sorted(m for m in sys.modules if m.startswith("
            "('convert', 'larq_compute_engine', 'bnn_keras.training.data', 'bnn_keras.training'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=CONVERT.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "['convert']"


@pytest.fixture
def count_parses(monkeypatch):
    """Counts full unpacks of a TFLite flatbuffer (what `read_model` does, whoever calls it)."""
    from tensorflow.lite.python import schema_py_generated as schema_fb

    calls = []
    unpack = schema_fb.ModelT.InitFromObj.__func__

    def counting(cls, model):
        calls.append(1)
        return unpack(cls, model)

    monkeypatch.setattr(schema_fb.ModelT, "InitFromObj", classmethod(counting))
    return calls


def test_evaluate_parses_the_flatbuffer_once(digits_tflite, count_parses):
    result = invoke(["evaluate", digits_tflite, "--limit", "8"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "on 8 digits images" in result.output
    assert len(count_parses) == 1  # before the Flatbuffer object: 8


def test_convert_parses_the_flatbuffer_once(tmp_path, count_parses):
    model_file = tmp_path / "tiny.keras"
    tiny_lce_model().save(model_file)
    out = tmp_path / "tiny.tflite"
    result = invoke(["convert", model_file, "-o", out, "--class-names", "a,b,c,d", "--mean", "0",
                     "--std", "1", "--samples", "4", "--min-agreement", "0"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[4:8] == b"TFL3"
    assert len(count_parses) == 1  # LCE's output; before the Flatbuffer object: 7


def test_rewritten_flatbuffers_equal_their_parsed_bytes():
    """`renamed` and `with_metadata` keep the tree they serialised instead of parsing the bytes
    again: that tree must be what parsing the bytes gives."""
    from tensorflow.lite.tools import flatbuffer_utils

    from convert.converter import convert_to_flatbuffer
    from convert.flatbuffer import Flatbuffer

    model = tiny_lce_model()
    converted = convert_to_flatbuffer(model)
    written = converted.with_metadata({"class_names": ["a", "b", "c", "d"]})
    again = written.with_metadata({**written.metadata, "dataset": "digits"})
    for made in (converted, written, again):
        parsed = Flatbuffer(made.data)
        assert (bytes(flatbuffer_utils.convert_object_to_bytearray(made.model))
                == bytes(flatbuffer_utils.convert_object_to_bytearray(parsed.model)))
        assert made.ops == parsed.ops and made.metadata == parsed.metadata
        assert made.io_quantization() == parsed.io_quantization()
    assert written.check_content_digest() and Flatbuffer(written.data).check_content_digest()
    assert again.metadata == {"class_names": ["a", "b", "c", "d"], "dataset": "digits"}
    assert converted.metadata is None and not converted.check_content_digest()
    # Tensors are named after their Keras layers, without the model's name in front.
    names = {bytes(t.name) for t in converted.model.subgraphs[0].tensors}
    assert {b"conv2/QuantConv2D", b"head/MatMul", b"pool/Mean"} <= names
    assert not any(name.startswith(f"{model.name}/".encode()) for name in names)


# The training application's modules that deployment must not need: a run folder is read for
# its model and `ModelInput`, not for how it was trained or where its images come from (the
# data sources and pipeline, TensorFlow Datasets).
TRAINING_APP = ("bnn_keras.training.config", "bnn_keras.training.recipes",
                "bnn_keras.training.tricks", "bnn_keras.training.distribute",
                "bnn_keras.training.run", "bnn_keras.training.stages",
                *(f"bnn_keras.training.data.{name}" for name in (
                    "sources", "tfds", "pipeline", "splits", "folder", "idx")),
                "tensorflow_datasets")


def test_deployment_modules_read_a_run_folder_without_the_training_app(digits_run):
    """`loading` loads a real run folder (its model and `RunSummary`), and `metadata`,
    `evaluate` and `bundle` read its config.json (through `ModelInput`) for the .tflite
    metadata, `bnn predict`'s preprocessing and the bundle; none of them loads the training app
    or TensorFlow Datasets."""
    run_dir = str(digits_run.run_dir)
    code = f"""
import json, sys
from convert import bundle, evaluate, loading, metadata
from bnn_keras.training.data.preprocessing import ModelInput
loaded = loading.load_trained_model({run_dir!r})
assert loaded.model.count_params() == {digits_run.model.count_params()}
config = json.loads(open({str(digits_run.run_dir / "config.json")!r}).read())
meta = metadata.run_metadata(loaded.run.model_input, model=loaded.run.model)
assert meta == metadata.run_metadata(config) and meta["model"] == config["model"]
options = evaluate.image_options(meta)
bundle.check_bundle_metadata(meta)
assert ModelInput.from_mapping(meta) == ModelInput.from_mapping(config) == loaded.run.model_input
assert options["pixel_max"] == 16.0
print(sorted(m for m in sys.modules
             if any(m == t or m.startswith(t + ".") for t in {TRAINING_APP!r})))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=CONVERT.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_pixel_maximum_rule_is_written_once():
    """The raw pixel maximum of a data set is decided by `pixel_max_for` alone."""
    sources = [*CONVERT.rglob("*.py"), *(REPO_ROOT / "bnn_keras").rglob("*.py")]
    rule = [path.relative_to(REPO_ROOT).as_posix() for path in sources
            if "DEFAULT_PIXEL_MAX =" in path.read_text() or '"digits": 16' in path.read_text()]
    assert rule == ["bnn_keras/training/data/preprocessing.py"]
