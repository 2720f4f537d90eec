"""Fixtures of the benchmark scripts' tests: a script loaded as a module (benchmarks/ is not
a package), and tiny Fashion-MNIST-shaped IDX files."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.training.test_data import _write_idx as write_idx

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(file_name: str, module_name: str):
    """benchmarks/FILE_NAME as a module named `module_name` (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / file_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark():
    """benchmarks/fashion_mnist.py as a module."""
    return load_script("fashion_mnist.py", "fashion_mnist_benchmark")


def write_fashion_idx(folder: Path, train: int = 96, test: int = 32) -> Path:
    """The four Fashion-MNIST IDX files in `folder`, of random 28x28 images and labels."""
    rng = np.random.RandomState(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte",
                  rng.randint(0, 256, (count, 28, 28)).astype(np.uint8), compress=False)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte",
                  rng.randint(0, 10, count).astype(np.uint8), compress=False)
    return folder
