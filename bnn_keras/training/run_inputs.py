"""The files a run depends on, frozen into its own folder when it starts.

A run that starts from a weights file (`TrainConfig.weights`) or distils from a teacher
(`TrainConfig.teacher`) needs that file again later: a resume before the first complete epoch
loads the weights file again, and every resume of a distilled run loads its teacher. Paths
break when a run folder is moved, copied to another machine, or when the original is changed
(a teacher run extended with `--resume --epochs N`, a file replaced), so the run keeps its
own copy:

    RUN_DIR/inputs/
        weights.h5        the weights file the run started from (its suffix kept: Keras picks
                          the format from it)
        teacher.keras     a teacher model file (.keras, .h5), or
        teacher/          a teacher run folder: its config.json and model.keras

The copy is the run's dependency; config.json keeps the path the user gave (`weights`,
`teacher`) as a note of where it came from, and the copy's sha256 (`weights_sha256`,
`teacher_sha256`), which must equal the sha256 of the file the run checked and loaded when it
started: a file changed in between is refused, never mixed. A resume uses the copy, checked
against that sha256, and never reads the recorded path. A run folder of an earlier bnn, which
has no copy, resumes from its recorded path (or the same file given again, by any path) when
its sha256 matches, and is given its copy then.

Inside a staged run (`bnn_keras.training.stages`), a stage's inputs are files of the same
staged run (an earlier stage's model.keras, the staged run's own copy of the user's teacher),
which bnn replaces but never rewrites in place: they are hard-linked rather than copied where
the file system allows.
"""

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Optional

from bnn_keras.errors import BnnError
from bnn_keras.files import atomic_path, file_sha256, link_or_copy
from bnn_keras.training.config import CONFIG_FILE, MODEL_FILE

INPUTS_DIR = "inputs"
WEIGHTS = "weights"
TEACHER = "teacher"


@dataclasses.dataclass(frozen=True)
class FrozenInput:
    """A run's copy of one input.

    Attributes:
        path: The copy: a file, or for a teacher run folder the folder (config.json and
            model.keras).
        model_file: The model or weights file inside `path` (`path` itself for a file).
        sha256: The sha256 of `model_file`.
    """

    path: Path
    model_file: Path
    sha256: str


def inputs_dir(run_dir: Path) -> Path:
    return Path(run_dir) / INPUTS_DIR


def frozen(run_dir: Path, role: str) -> Optional[Path]:
    """The run's copy of input `role` (WEIGHTS or TEACHER): a file `role.*` or a folder
    `role/`, or None when the run has none (it has no such input, or an earlier bnn wrote
    it)."""
    folder = inputs_dir(run_dir)
    if (folder / role).is_dir():
        return folder / role
    if folder.is_dir():
        for path in sorted(folder.glob(f"{role}.*")):
            if path.is_file() and not path.name.startswith("."):
                return path
    return None


def read_frozen(run_dir: Path, role: str, sha256: Optional[str],
                what: str) -> Optional[FrozenInput]:
    """The run's copy of input `role`, checked against the sha256 config.json recorded; None
    when the run has no copy.

    Args:
        run_dir: The run folder.
        role: WEIGHTS or TEACHER.
        sha256: The recorded sha256 of its model file.
        what: How messages name the input (e.g. "`teacher`").

    Raises:
        BnnError: the copy is incomplete, unreadable, or another file than the one recorded.
    """
    path = frozen(run_dir, role)
    if path is None:
        return None
    model_file = path / MODEL_FILE if path.is_dir() else path
    try:
        digest = file_sha256(model_file)
    except OSError as exc:
        raise BnnError(f"Run {run_dir} keeps its {what} in {model_file}, which cannot be read "
                       f"({exc.strerror or exc}); restore the run folder from a copy, or start "
                       "a new run.") from None
    if digest != sha256:
        raise BnnError(f"Run {run_dir} keeps its {what} in {model_file}, which has changed since "
                       "the run started (sha256); restore the run folder from a copy, or start "
                       "a new run.")
    return FrozenInput(path=path, model_file=model_file, sha256=digest)


def freeze(run_dir: Path, role: str, source: Path, sha256: str, what: str) -> FrozenInput:
    """Copies input `role` from `source` (a file, or a run folder's config.json and
    model.keras) into RUN_DIR/inputs, and checks that the copy is the file the run checked
    (`sha256`, computed when the run started).

    The copy is complete or absent: it is written under a temporary name and renamed.

    Raises:
        BnnError: `source` cannot be read, or it changed since it was checked.
    """
    source = Path(source)
    folder = inputs_dir(run_dir)
    folder.mkdir(exist_ok=True)
    link = _inside_same_staged_run(source, run_dir)
    try:
        if source.is_dir():
            final = folder / role
            partial = folder / f".{role}.partial-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            try:
                partial.mkdir()
                for name in (CONFIG_FILE, MODEL_FILE):
                    _copy(source / name, partial / name, link)
                digest = file_sha256(partial / MODEL_FILE)
                _check_same(digest, sha256, source / MODEL_FILE, what)
                partial.rename(final)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            return FrozenInput(path=final, model_file=final / MODEL_FILE, sha256=digest)
        final = folder / f"{role}{source.suffix}"
        with atomic_path(final) as tmp:
            _copy(source, tmp, link)
            digest = file_sha256(tmp)
            _check_same(digest, sha256, source, what)
        return FrozenInput(path=final, model_file=final, sha256=digest)
    except OSError as exc:
        raise BnnError(f"{what} {source} cannot be copied into the run folder "
                       f"({exc.strerror or exc}).") from None


def _check_same(digest: str, expected: str, source: Path, what: str) -> None:
    if digest != expected:
        raise BnnError(f"{what} {source} changed while the run was starting (sha256); start the "
                       "run again once nothing writes to it.")


def _copy(source: Path, destination: Path, link: bool) -> None:
    if link:
        link_or_copy(source, destination)
    else:
        shutil.copyfile(source, destination)


def _inside_same_staged_run(source: Path, run_dir: Path) -> bool:
    """Whether `source` is a file of the staged run that `run_dir` is a stage of."""
    from bnn_keras.training.stages import staged_run_of_stage

    staged = staged_run_of_stage(run_dir)
    if staged is None:
        return False
    return Path(staged).resolve() in Path(source).resolve().parents



def remove_inputs(run_dir: Path) -> None:
    """Removes RUN_DIR/inputs (a new run that stopped before it recorded anything)."""
    shutil.rmtree(inputs_dir(run_dir), ignore_errors=True)

