"""Trained and converted test artefacts, made once and shared by every test process.

Training a tiny BinaryDenseNet28 or converting a registry model takes seconds to a minute on the
2-core CI machine, and many tests need the same one. Each artefact is therefore built once, into
pytest's cache folder (`.pytest_cache/d/bnn-artefacts`), under a key made of:

- the artefact's name;
- the hash of every source file that could change it (the packages, `cli.py`, setup.cfg and the
  test modules that define the builds: the conftest.py files and this one);
- the versions of the libraries that compute it (TensorFlow, tf-keras, larq, LCE, NumPy, ...);
- the Python version and whether the CPU has native bfloat16 (the default precision follows it).

A second test process (a pytest-xdist worker, the next run of the suite) finds the folder and
reuses it; two processes that ask at once are serialized by an OS lock on the key, so nothing
is built twice. A folder counts only once its build has returned (a marker file), so an
interrupted build is made again rather than used half-made. Tests never write into the cache:
fixtures copy an artefact to a temporary folder before handing it out.
"""

import fcntl
import hashlib
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]

# What an artefact depends on. Tests' own modules count only where they define a build; the
# fixture folders (2.6 MB), because some artefacts are made from them (an old run, resumed).
_SOURCES = ("bnn_keras", "models", "convert", "cli.py", "setup.cfg", "tests/conftest.py",
            "tests/*/conftest.py", "tests/artefacts.py", "tests/fixtures")
_LIBRARIES = ("tensorflow", "tf-keras", "larq", "larq-compute-engine", "numpy", "scikit-learn",
              "tensorflow-datasets", "h5py", "flatbuffers")


def _source_files(root: Path) -> Iterable[Path]:
    for name in _SOURCES:
        for path in sorted(root.glob(name)):  # a file, a folder, or a pattern of files
            if path.is_file():
                yield path
            elif path.is_dir():
                yield from sorted(p for p in path.rglob("*")
                                  if p.is_file() and "__pycache__" not in p.parts)


def _library_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def source_key(root: Path = REPO_ROOT) -> str:
    """A short hash of the sources, library versions and CPU kind that artefacts depend on."""
    from bnn_keras.training.precision import cpu_supports_bf16

    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    for name in _LIBRARIES:
        digest.update(f"{name}={_library_version(name)}\n".encode())
    digest.update(f"python={platform.python_version()} bf16={cpu_supports_bf16()}".encode())
    return digest.hexdigest()[:16]


class ArtefactCache:
    """Folders built once per key and reused by every process that shares `root`.

    Args:
        root: The folder holding the artefacts (pytest's cache folder, or a temporary one).
        key: The source key (`source_key()`); an artefact built from other sources is not used.
    """

    def __init__(self, root: Path, key: str):
        self.root = Path(root)
        self.key = key
        self.root.mkdir(parents=True, exist_ok=True)
        self._prune_other_keys()

    def folder(self, name: str, build: Callable[[Path], None]) -> Path:
        """The folder of artefact `name`, calling `build(folder)` to fill it if it is not there.

        The build runs in the folder's final place (a command's output names the path it wrote,
        and tests compare it), and a marker file written after it returns is what makes the
        folder count: a build that was interrupted is removed and made again. The returned
        folder is shared: read it, or copy it before changing anything.
        """
        final = self.root / f"{name}-{self.key}"
        done = self.root / f"{name}-{self.key}.done"
        with open(self.root / f"{name}-{self.key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
            if done.is_file() and final.is_dir():
                return final
            shutil.rmtree(final, ignore_errors=True)
            final.mkdir()
            try:
                build(final)
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
            done.touch()
            return final

    def _prune_other_keys(self) -> None:
        """Removes the artefacts of other sources, so the cache does not grow with every edit
        (only those that no process holds locked)."""
        for lock_path in self.root.glob("*.lock"):
            stem = lock_path.name[:-len(".lock")]
            if stem.endswith(self.key):
                continue
            with open(lock_path, "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue
                (self.root / f"{stem}.done").unlink(missing_ok=True)
                shutil.rmtree(self.root / stem, ignore_errors=True)
                lock_path.unlink(missing_ok=True)


def copy_of(folder: Path, destination: Path) -> Path:
    """A private copy of a shared artefact folder at `destination`."""
    shutil.copytree(folder, destination, symlinks=True)
    return destination


def cache_root(config, fallback: Optional[Path]) -> Path:
    """pytest's cache folder for artefacts, or `fallback` when the cache plugin is off."""
    cache = getattr(config, "cache", None)
    if cache is None:
        return fallback
    return Path(cache.mkdir("bnn-artefacts"))

