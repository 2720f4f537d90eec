"""The Fashion-MNIST benchmark refuses a bad argument before it measures, installs, trains or
writes anything: one line `fashion_mnist.py: error: ...` on stderr, exit code 2, and every file
as it was (no output folder left behind)."""

import hashlib
import json
import re
from pathlib import Path
from typing import Dict

import pytest

from tests.benchmarks.conftest import write_fashion_idx

PREFIX = "fashion_mnist.py: error: "


def _tree(root: Path) -> Dict[str, str]:
    """Every file (by sha256) and folder under `root`."""
    return {str(p.relative_to(root)): ("folder" if p.is_dir() else
                                       hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    return write_fashion_idx(tmp_path_factory.mktemp("fashion") / "idx", train=16, test=8)


@pytest.fixture
def refused(benchmark, tmp_path, idx_dir, capsys, monkeypatch):
    """Runs the script's main() on the given arguments (after a data folder, an output folder
    and the default network's speed, which they may override); asserts a one-line refusal with
    exit code 2 that changed no file under tmp_path, and returns its message."""

    def never(*args, **kwargs):
        raise AssertionError("the benchmark started working before refusing its arguments")

    for name in ("steady_images_per_second", "train"):
        monkeypatch.setattr(benchmark, name, never)
    monkeypatch.setattr(benchmark.subprocess, "run", never)  # no apt-get either

    def run(argv) -> str:
        before = _tree(tmp_path)
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(["--data-dir", str(idx_dir), "--output", str(tmp_path / "out"),
                            "--default-images-per-s", "184", *map(str, argv)])
        captured = capsys.readouterr()
        assert exit_info.value.code == 2, captured
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(PREFIX), captured.err
        assert captured.out == ""
        assert _tree(tmp_path) == before
        return lines[0][len(PREFIX):]

    return run


@pytest.mark.parametrize("budget", ["0", "-2", "nan", "inf"])
def test_a_budget_must_be_a_finite_positive_number_of_minutes(refused, budget):
    """The issue: --budget 0 gave a traceback (and left the output folder); nan trained for
    1,000 epochs, since no time is ever >= nan."""
    shown = f"{float(budget):g}"
    assert refused(["--budget", budget]) == (
        f"--budget {shown}: give a finite number of reference minutes > 0, e.g. 15.")


def test_a_budget_that_is_not_a_number_is_refused_in_argparse_words(refused):
    assert refused(["--budget", "ten"]) == "argument --budget: invalid float value: 'ten'"


@pytest.mark.parametrize("seeds", ["a,b", "", "0,,1", "-1", "1.5", str(2**32)])
def test_seeds_must_be_integers(refused, seeds):
    assert refused(["--seeds", seeds]) == (
        f"--seeds {seeds!r}: give seeds as integers from 0 to 4294967295 separated by commas, "
        "e.g. 0,1,2.")


@pytest.mark.parametrize("rows", ["", " , "])
def test_rows_must_name_a_row(benchmark, refused, rows):
    """The issue: --rows "" trained nothing, then failed with a traceback in plot()."""
    assert refused(["--rows", rows]) == (
        f"--rows {rows!r} names no row; give one or more of {', '.join(benchmark.ROWS)}, "
        "separated by commas.")


def test_an_unknown_row_is_refused_with_the_known_ones(benchmark, refused):
    assert refused(["--rows", "quicknet-s2,quicknet-s3"]) == (
        f"--rows: unknown row 'quicknet-s3'; choose from {', '.join(benchmark.ROWS)}.")


@pytest.mark.parametrize("spec", ["quicknet-s2@", "quicknet-s2@x", "quicknet-s2@0+-1"])
def test_the_seeds_of_one_row_must_be_integers(refused, spec):
    assert refused(["--rows", spec]) == (
        f"--rows {spec}: give the seeds after @ as integers from 0 to 4294967295 separated by "
        "+, e.g. quicknet-s2@0+1.")


def test_a_run_listed_twice_is_refused(refused):
    """Both would train into one run folder: the second would fail after the first's budget."""
    assert refused(["--rows", "quicknet-s2,quicknet-s2-float,quicknet-s2@1+0",
                    "--seeds", "0"]) == (
        "--rows lists quicknet-s2 with seed 0 twice; list each run once.")


@pytest.mark.parametrize("argv,message", [
    (["--rows", "quicknet-s2-kd"],
     "Row quicknet-s2-kd distils from a teacher: give --teacher (a row of this invocation, a "
     "run folder or a Keras model file)."),
    (["--rows", "quicknet-s2-kd,quicknet-s2-float", "--teacher", "quicknet-s2-float"],
     "--teacher quicknet-s2-float: list that row with seed 0 before quicknet-s2-kd in --rows."),
    (["--rows", "quicknet-s2-float@1,quicknet-s2-kd@0", "--teacher", "quicknet-s2-float"],
     "--teacher quicknet-s2-float: list that row with seed 0 before quicknet-s2-kd in --rows."),
])
def test_a_distilled_row_without_its_teacher_is_refused(refused, argv, message):
    assert refused(argv) == message


def test_a_missing_teacher_file_is_refused(refused, tmp_path):
    """The issue: a traceback, and an empty output folder left behind."""
    missing = tmp_path / "teacher.keras"
    assert refused(["--rows", "quicknet-s2-kd", "--teacher", missing]) == (
        f"--teacher {missing} does not exist; give a row of this invocation, a run folder of "
        "bnn train or a Keras model file (.keras, .h5).")


def test_a_teacher_that_is_not_a_keras_model_is_refused(refused, tmp_path):
    junk = tmp_path / "teacher.keras"
    junk.write_bytes(b"not a zip archive")
    message = refused(["--rows", "quicknet-s2-kd", "--teacher", junk])
    assert message == (f"Could not load --teacher {junk} as a Keras model (its bytes are neither "
                       "a .keras zip nor HDF5); give a .keras or .h5 model file or a SavedModel "
                       "folder.")


def test_a_teacher_folder_that_is_not_a_run_is_refused(refused, tmp_path):
    folder = tmp_path / "teacher"
    folder.mkdir()
    message = refused(["--rows", "quicknet-s2-kd", "--teacher", folder])
    assert message.startswith(f"--teacher {folder}: {folder / 'config.json'} does not exist: "
                              f"{folder} is not a run folder written by "), message


@pytest.mark.parametrize("argv,message", [
    (["--default-images-per-s", "0"],
     "--default-images-per-s 0: give the default network's images/s here, a finite number "
     "> 0."),
    (["--default-images-per-s", "nan"],
     "--default-images-per-s nan: give the default network's images/s here, a finite number "
     "> 0."),
    (["--lr", "nan"], "--lr nan: give a finite number."),
    (["--lr", "0"], "Expected --lr > 0, got 0.0."),
    (["--optimizer", "adam-sgd", "--float-lr", "-1"], "Expected --float-lr > 0, got -1.0."),
    (["--batch-size", "0"], "Expected --batch-size >= 1, got 0."),
    (["--label-smoothing", "1"], "Expected --label-smoothing < 1, got 1.0."),
    (["--float-share", "1"],
     "--float-share 1: give a fraction of the budget between 0 and 1, e.g. 0.3."),
    (["--float-share", "nan"],
     "--float-share nan: give a fraction of the budget between 0 and 1, e.g. 0.3."),
    (["--rows", "quicknet-s2,quicknet-s2-kd", "--teacher", "quicknet-s2",
      "--distill-weight", "2"], "Expected --distill-weight in (0, 1], got 2.0."),
    (["--rows", "quicknet-s2-kd", "--teacher", "quicknet-s2", "--distill-temperature", "inf"],
     "--distill-temperature inf: give a finite number."),
    (["--rows", "quicknet-s2,quicknet-s2-kd", "--teacher", "quicknet-s2", "--distill-cache",
      "--augment", "crop_flip"], None),
    (["--precision", "fp16"], None),
])
def test_numbers_and_training_options_are_checked_before_any_work(refused, argv, message):
    found = refused(argv)
    if message is not None:
        assert found == message
    else:  # the training's own check, naming the script's option
        flag = next(a for a in reversed(argv) if a.startswith("--"))
        assert flag in found, found


def test_a_data_folder_without_the_idx_files_is_refused_without_apt_get(refused, tmp_path):
    """apt-get installs into /usr/share/datasets/fashion-mnist only: for another folder it
    cannot help."""
    empty = tmp_path / "data"
    empty.mkdir()
    assert refused(["--data-dir", empty]) == (
        f"--data-dir {empty} has no Fashion-MNIST IDX files (train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each may be "
        ".gz); give the folder that holds them.")


def test_an_output_that_is_used_or_not_a_folder_is_refused(refused, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "results.json").write_text("{}")
    assert refused(["--output", used]) == f"--output {used} is not empty; give a new folder."
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    assert refused(["--output", a_file]) == (
        f"--output {a_file} is not a folder; give a new folder.")


def _results(tmp_path: Path) -> Path:
    tmp_path.mkdir()
    path = tmp_path / "results.json"
    row = {"row": "quicknet-s2", "about": "QuickNet", "seed": 0, "test_accuracy": 0.9,
           "wall_time_s": 60.0, "teacher_time_s": 0.0, "images_per_s": 200.0, "epochs": 1.0,
           "binary_mac_fraction": 0.9, "distill": False, "float_copy": False, "budget": 1.0,
           "scale": 1.0, "curve": [[60.0, 100, 0.9]]}
    path.write_text(json.dumps({"default_images_per_s": 184.0, "scale": 1.0, "budget": 1.0,
                                "results": [row]}))
    return path


@pytest.mark.parametrize("content", [None, "{not json", '{"results": []}'])
def test_combining_a_file_that_is_not_a_results_json_is_refused(refused, tmp_path, content):
    good = _results(tmp_path / "good")  # read first: its line is not printed before the error
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    message = refused(["--combine", good, path])
    assert re.fullmatch(rf"--combine {re.escape(str(path))}: not a results\.json of this "
                        r"benchmark \(.*\); give the results\.json of an OUTPUT folder\.",
                        message), message


def test_combining_into_a_used_folder_is_refused(refused, tmp_path):
    used = tmp_path / "plots"
    used.mkdir()
    (used / "accuracy.png").write_bytes(b"an earlier plot")
    assert refused(["--combine", _results(tmp_path / "r"), "--output", used]) == (
        f"--output {used} is not empty; give a new folder.")


def test_valid_arguments_pass_the_checks(benchmark, idx_dir, tmp_path):
    """The checks return the runs in order, and leave the output folder to be made later."""
    args = benchmark.build_parser().parse_args([
        "--rows", "quicknet-s2-float,quicknet-s2-kd@0+3, resnete", "--seeds", "0,3",
        "--teacher", "quicknet-s2-float", "--data-dir", str(idx_dir),
        "--output", str(tmp_path / "out"), "--budget", "0.5"])
    assert benchmark.check_arguments(args) == [
        ("quicknet-s2-float", 0), ("quicknet-s2-float", 3), ("quicknet-s2-kd", 0),
        ("quicknet-s2-kd", 3), ("resnete", 0), ("resnete", 3)]
    assert not (tmp_path / "out").exists()


def test_a_teacher_model_file_that_loads_passes_the_checks(benchmark, idx_dir, tmp_path):
    from tests.conftest import tiny_lce_model

    teacher = tmp_path / "teacher.keras"
    tiny_lce_model().save(teacher)
    args = benchmark.build_parser().parse_args([
        "--rows", "quicknet-s2-kd", "--teacher", str(teacher), "--data-dir", str(idx_dir),
        "--output", str(tmp_path / "out")])
    assert benchmark.check_arguments(args) == [("quicknet-s2-kd", 0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.keras"]
