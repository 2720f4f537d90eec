"""Auditing a Raspberry Pi bundle: its manifest.json, the check of every file bnn wrote, and
the self-check (`check_bundle`, behind `bnn check-bundle`).

manifest.json lists the sha256 and size of every file bnn wrote into a bundle (format 3 on); it
is written last, so a folder without it is not a complete bundle. `check_bundle` compares every
file with it, then runs the same self-check as `run.sh` on this machine with LCE's interpreter
(isolated in a child process). A bundle from before manifests (formats 1 and 2) is checked as far
as model.json and the scripts bnn wrote allow (`PRE_MANIFEST_DIGESTS`). Any other file in the
folder is the user's (notes) or the scripts' on the device (`build/`): listed, never checked, and
kept when `overwrite` replaces the bundle (`entries_to_keep`).
"""

import dataclasses
import hashlib
import itertools
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np

from bnn_keras import files
from bnn_keras.errors import BnnError
from convert.bundle_layout import (
    BUNDLE_FILES,
    BUNDLE_FORMAT,
    DEVICE_FILE_PREFIX,
    DEVICE_FOLDERS,
    EXPECTED_OUTPUT_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    MODEL_JSON,
    PRE_MANIFEST_FILES,
    RAW_DTYPE,
    REQUIRED_FILES,
    RUNNER_ARGS_FILE,
    RUNNER_SOURCES,
    SCRIPTS,
    SHELL_LIBRARY,
    TEST_INPUT_FILE,
    TFLITE_FILE,
    runner_args,
)
from convert.flatbuffer import Flatbuffer
from convert.isolated import DEFAULT_TIMEOUT_S, isolated_predict

MANIFEST_FORMAT = "bnn-bundle-manifest"
MANIFEST_VERSION = 1
# sha256 of every version of the scripts and runner sources that bundles without a manifest hold
# (convert/runner/ as commits 5962700, d25c11c, 941a17e and d8b2bd7 left it: every change up to
# bnn 0.3.0), so that an edited script in such a bundle is found too. Frozen, as
# PRE_MANIFEST_FILES.
PRE_MANIFEST_DIGESTS = {
    "run.sh": frozenset({
        "d23fb5285e65dfef1fe3ad82b035567b2de3dbd77eed27d7a6a2790fe5fd2a45",
        "4dcd8066af073185645a0319e9e2e2b7011853e45510c9f60423654b770d34ce",
    }),
    "build.sh": frozenset({
        "e42fad7b9af09f648748b7ca4b5d11d791e1c585cb4d1cb0ebb0016b6a0717f1",
        "39bd3223e1cdada60c99071ad23df0c01322abdd585bde016627f68f093baca4",
    }),
    "benchmark.sh": frozenset({
        "59e1813321f376f3ac422b4c46d19a6580d6300ea74130054fbbfcf8c6f751a4",
        "1facd0a8b98b1fe8f4ad90655f439a355013b33eedf341b4c89a39f1c0862675",
        "d57ee30aeaec05631dbb615d2e2ba0dc8905dbd75548f680dd26352d420d6047",
    }),
    "pi.sh": frozenset({
        "1c0001c585361ccc00c9c8bd837298346353ee45fb710670cfec118cf84c1842",
        "b011dc6ff4dd5e27d067580effb73e333bb4425780207100d1415854ef7979ad",
    }),
    "runner/bnn_runner.cc": frozenset({
        "f2afc7b4066eee0a4139b7e212dd6a971874fb5c3593cec32bb9d73c6548ce4a",
    }),
    "runner/CMakeLists.txt": frozenset({
        "008ebf31d3e50446b2e872a10f3416c5ad1f1a4160df8c612a7f87dc802be72c",
        "f98335bd6b7b773a081ff7a974f73702a47f3ab5a556fbfed47ce487759ca118",
    }),
}


@dataclasses.dataclass
class CheckResult:
    """Outcome of a bundle self-check.

    Attributes:
        ok: Output within tolerance and the same top-1 class as expected.
        max_abs_diff: Largest |actual - expected| over the output.
        atol: The bundle's tolerance.
        expected_top1: Arg-max of the expected output.
        actual_top1: Arg-max of LCE's output.
        manifest: Whether the files were compared with a manifest.json (False: a bundle from
            before manifests, checked as far as model.json and the known scripts allow).
        bundle_sha256: The manifest's digest of all of bnn's files (None without a manifest).
        files_checked: bnn's files found as bnn wrote them.
        files_unchecked: bnn's files a bundle without a manifest gives no way to check.
        user_files: Entries bnn did not write ("notes.txt", "photos/"): not checked, kept by
            `overwrite`.
        device_files: What build.sh and benchmark.sh leave on the device ("build/").
        class_names: The bundle's class names (model.json's, which labels.txt was checked
            against), one per output; empty when it gives none.
    """

    ok: bool
    max_abs_diff: float
    atol: float
    expected_top1: int
    actual_top1: int
    manifest: bool = False
    bundle_sha256: Optional[str] = None
    files_checked: List[str] = dataclasses.field(default_factory=list)
    files_unchecked: List[str] = dataclasses.field(default_factory=list)
    user_files: List[str] = dataclasses.field(default_factory=list)
    device_files: List[str] = dataclasses.field(default_factory=list)
    class_names: List[str] = dataclasses.field(default_factory=list)

    def label(self, index: int) -> str:
        """Class `index` by its name, with the index: "Sneaker (7)"; the index alone where the
        name is the index (digits) or the bundle names no classes."""
        if 0 <= index < len(self.class_names) and self.class_names[index] != str(index):
            return f"{self.class_names[index]} ({index})"
        return str(index)


# ----------------------------------------------------------------------------------------------
# manifest.json: which files bnn wrote, and their content

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A manifest.json that is not bnn's: in a bundle from before manifests, the user's own file.
_FOREIGN_MANIFEST = "is not the manifest of a bnn bundle"


def _bundle_digest(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """One digest for the whole bundle: sha256 of the file list (path -> sha256, size) as compact,
    key-sorted JSON. An edited manifest no longer matches it."""
    return hashlib.sha256(
        json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def files_under(folder: Path) -> List[str]:
    """The regular files under `folder` (symbolic links left out), as sorted POSIX paths relative
    to it: what a manifest lists."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                  if path.is_file() and not path.is_symlink())


def write_manifest(folder: Path) -> str:
    """Records every file of `folder` (the freshly assembled bundle: all of them bnn's) in
    manifest.json; returns the bundle digest."""
    entries = {name: {"sha256": files.file_sha256(folder / name),
                      "size": (folder / name).stat().st_size}
               for name in files_under(folder)}
    digest = _bundle_digest(entries)
    files.write_json(folder / MANIFEST_FILE, {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "files": entries,
        "bundle_sha256": digest,
    })
    return digest


def _inside_bundle(name: Any) -> bool:
    if not isinstance(name, str) or not name or "\\" in name or name == MANIFEST_FILE:
        return False
    path = PurePosixPath(name)
    return (not path.is_absolute() and path.as_posix() == name
            and all(part not in ("", ".", "..") for part in path.parts))


def _valid_entry(entry: Any) -> bool:
    return (isinstance(entry, dict) and set(entry) == {"sha256", "size"}
            and isinstance(entry["sha256"], str) and bool(_SHA256_HEX.fullmatch(entry["sha256"]))
            and isinstance(entry["size"], int) and entry["size"] >= 0)


def _read_manifest(folder: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """The bundle's manifest, or None, and what is wrong with its manifest.json (None when it is
    fine or absent).

    Raises:
        BnnError: a manifest of a newer format than this bnn reads.
    """
    path = folder / MANIFEST_FILE
    if path.is_symlink() or not path.is_file():
        return None, None
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return None, _FOREIGN_MANIFEST
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None, _FOREIGN_MANIFEST
    version = manifest.get("format_version")
    if isinstance(version, int) and version > MANIFEST_VERSION:
        raise BnnError(f"{path} has format_version {version}, newer than this bnn reads "
                       f"({MANIFEST_VERSION}); upgrade bnn.")
    entries = manifest.get("files")
    if version != MANIFEST_VERSION or not isinstance(entries, dict):
        return None, _FOREIGN_MANIFEST
    for name, entry in entries.items():
        if not _inside_bundle(name):
            return None, f"lists {name!r}, which is not a path inside the bundle"
        if not _valid_entry(entry):
            return None, f"has no sha256 and size for {name}"
    if manifest.get("bundle_sha256") != _bundle_digest(entries):
        return None, ("was changed after bnn wrote it (its bundle_sha256 does not match its list "
                      "of files)")
    return manifest, None


# ----------------------------------------------------------------------------------------------
# An existing bundle's files: bnn's as it wrote them, edited, missing; the user's; the device's

@dataclasses.dataclass
class _Audit:
    """What a bundle folder holds, against what bnn wrote into it."""

    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)
    manifest: Optional[Dict[str, Any]] = None
    manifest_problem: Optional[str] = None
    problems: List[str] = dataclasses.field(default_factory=list)  # model.json's
    missing: List[str] = dataclasses.field(default_factory=list)
    changed: Dict[str, str] = dataclasses.field(default_factory=dict)  # name -> what differs
    checked: List[str] = dataclasses.field(default_factory=list)
    unchecked: List[str] = dataclasses.field(default_factory=list)
    owned: List[str] = dataclasses.field(default_factory=list)  # bnn's, whatever their state
    user: List[str] = dataclasses.field(default_factory=list)
    device: List[str] = dataclasses.field(default_factory=list)


def _read_model_json(folder: Path, audit: _Audit) -> None:
    path = folder / MODEL_JSON
    if not path.is_file():
        return  # named among the missing files
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        audit.problems.append(f"{MODEL_JSON} is not valid JSON")
        return
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        audit.problems.append(f"{MODEL_JSON} is not a bnn bundle description")
        return
    audit.meta = meta


def _runner_args_difference(folder: Path, meta: Mapping[str, Any]) -> Optional[str]:
    """The first argument in runner_args.txt that differs from what bnn writes for `meta`, as
    run.sh passes them (blank lines skipped); None when they agree or `meta` cannot tell."""
    try:
        expected = runner_args(float(meta["expected_output"]["atol"]), meta["normalization"],
                                float(meta["pixel_max"])).splitlines()
        text = (folder / RUNNER_ARGS_FILE).read_text()
    except (KeyError, TypeError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    actual = [line for line in text.splitlines() if line.strip()]
    for got, want in itertools.zip_longest(actual, expected):
        if got != want:
            if got is None:
                return f"{want} is missing"
            return f"{got} where {MODEL_JSON} gives {want or 'no more arguments'}"
    return None


def _labels_differ(folder: Path, meta: Mapping[str, Any]) -> bool:
    try:
        return (folder / LABELS_FILE).read_text().splitlines() != list(meta["class_names"])
    except (KeyError, TypeError, ValueError):
        return True


def _compare_with_manifest(folder: Path, manifest: Mapping[str, Any], audit: _Audit) -> None:
    edited = []
    for name, entry in manifest["files"].items():
        path = folder / name
        audit.owned.append(name)
        if not path.is_file():
            audit.missing.append(name)
        elif (path.is_symlink() or path.stat().st_size != entry["size"]
              or files.file_sha256(path) != entry["sha256"]):
            edited.append(name)
        else:
            audit.checked.append(name)
    # model.json as bnn wrote it says what runner_args.txt and labels.txt should hold.
    meta_intact = MODEL_JSON in audit.checked and bool(audit.meta)
    for name in edited:
        detail = None
        if meta_intact and name == RUNNER_ARGS_FILE:
            detail = _runner_args_difference(folder, audit.meta)
        elif meta_intact and name == LABELS_FILE and _labels_differ(folder, audit.meta):
            detail = f"it does not match the class names in {MODEL_JSON}"
        audit.changed[name] = f"{name} was changed after bnn wrote it" + (
            f" ({detail})" if detail else "")


def _compare_without_manifest(folder: Path, audit: _Audit, needs_manifest: bool) -> None:
    version = audit.meta.get("format_version", 1)
    # Bundles of format 1 predate pi.sh and expected_latency.txt: there they are the user's.
    layout = 2 if isinstance(version, int) and version >= 2 else 1
    required = [*REQUIRED_FILES, RUNNER_ARGS_FILE, *SCRIPTS, *RUNNER_SOURCES]
    if layout >= 2:
        required.append(SHELL_LIBRARY)
    if needs_manifest and not (folder / MANIFEST_FILE).exists():
        required.append(MANIFEST_FILE)
    audit.missing = [name for name in required if not (folder / name).is_file()]
    audit.owned = [name for name in PRE_MANIFEST_FILES[layout] if (folder / name).is_file()]
    if not needs_manifest:  # the scripts of a bundle from before manifests: one bnn wrote?
        for name, digests in PRE_MANIFEST_DIGESTS.items():
            if name in audit.owned and files.file_sha256(folder / name) in digests:
                audit.checked.append(name)
            elif name in audit.owned:
                audit.changed[name] = f"{name} differs from every version bnn wrote"
    if audit.meta and RUNNER_ARGS_FILE in audit.owned:
        difference = _runner_args_difference(folder, audit.meta)
        if difference:
            audit.changed[RUNNER_ARGS_FILE] = (f"{RUNNER_ARGS_FILE} does not match {MODEL_JSON} "
                                               f"({difference})")
        else:
            audit.checked.append(RUNNER_ARGS_FILE)
    if audit.meta and LABELS_FILE in audit.owned:
        if _labels_differ(folder, audit.meta):
            audit.changed[LABELS_FILE] = (f"{LABELS_FILE} does not match the class names in "
                                          f"{MODEL_JSON}")
        else:
            audit.checked.append(LABELS_FILE)
    audit.unchecked = [name for name in audit.owned
                       if name not in audit.checked and name not in audit.changed]


def _is_device_output(name: str) -> bool:
    return name in DEVICE_FOLDERS or name.startswith(DEVICE_FILE_PREFIX)


def _others(folder: Path, owned: Set[str]) -> Tuple[List[str], List[str]]:
    """The entries of `folder` that bnn did not write: the user's, and the device's (build.sh's,
    benchmark.sh's). A folder holding none of bnn's files is one entry, "name/"."""
    descend = {parent.as_posix() for name in (*owned, *BUNDLE_FILES)
               for parent in PurePosixPath(name).parents} - {"."}
    user: List[str] = []
    device: List[str] = []

    def visit(relative: str) -> None:
        with os.scandir(folder / relative) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                name = f"{relative}/{entry.name}" if relative else entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                if name in owned and not is_dir:
                    continue
                if name in descend and is_dir:
                    visit(name)
                    continue
                shown = f"{name}/" if is_dir else name
                (device if not relative and _is_device_output(name) else user).append(shown)

    visit("")
    return user, device


def _audit(folder: Path) -> _Audit:
    """Compares `folder` with its manifest.json, or for a bundle from before manifests with
    model.json and the scripts bnn wrote, and sorts out the files bnn did not write."""
    audit = _Audit()
    _read_model_json(folder, audit)
    audit.manifest, audit.manifest_problem = _read_manifest(folder)
    version = audit.meta.get("format_version", 1)
    needs_manifest = isinstance(version, int) and version >= 3
    if audit.manifest_problem == _FOREIGN_MANIFEST and not needs_manifest:
        audit.manifest_problem = None  # a bundle from before manifests: the user's own file
    if audit.manifest is not None:
        _compare_with_manifest(folder, audit.manifest, audit)
    else:
        _compare_without_manifest(folder, audit, needs_manifest)
    owned = set(audit.owned)
    if audit.manifest is not None or audit.manifest_problem:
        owned.add(MANIFEST_FILE)
    audit.user, audit.device = _others(folder, owned)
    return audit


def entries_to_keep(folder: Path, new_files: Iterable[str], *, what: str) -> List[str]:
    """The entries of the bundle `folder` that are not bnn's, to keep in the bundle replacing it.

    Args:
        folder: An existing bundle (or empty folder).
        new_files: The files the new bundle writes, relative to it.
        what: How the caller names the folder, for the messages ("--bundle").

    Raises:
        BnnError: naming the first thing that replacing bnn's files would lose: one of them
            edited since bnn wrote it, an entry of the user's where the new bundle writes, or a
            manifest.json that no longer tells bnn's files from the user's.
    """
    audit = _audit(folder)
    retry = "move it out of the folder (or choose another folder), then run again."
    if audit.manifest_problem:
        raise BnnError(f"{what} {folder}: {MANIFEST_FILE} {audit.manifest_problem}, so bnn "
                       "cannot tell its files from yours; move your files out of the folder (or "
                       "choose another folder), then run again.")
    if audit.changed:
        name = next(iter(audit.changed))
        raise BnnError(f"{what} {folder}: {name} was changed after bnn wrote it, and a new bundle "
                       f"would replace it; {retry}")
    new = set(new_files)
    taken = new | {parent.as_posix() for name in new for parent in PurePosixPath(name).parents}
    for entry in (*audit.user, *audit.device):
        if entry.rstrip("/") in taken:
            raise BnnError(f"{what} {folder} holds {entry}, which bnn did not write and a new "
                           f"bundle would replace; {retry}")
    return [*audit.user, *audit.device]


# ----------------------------------------------------------------------------------------------
# The self-check: every file against the manifest, then test input -> expected output

def _read_raw(path: Path, shape: Sequence[int], what: str, problems: List[str]) -> Optional[np.ndarray]:
    count = int(np.prod(shape))
    size = path.stat().st_size
    if size != count * RAW_DTYPE.itemsize:
        problems.append(
            f"{path.name} has {size} bytes, expected {count * RAW_DTYPE.itemsize} "
            f"({what} of shape {list(shape)} float32)"
        )
        return None
    return np.fromfile(path, dtype=RAW_DTYPE).reshape(shape)


def _test_tensors(folder: Path, audit: _Audit, problems: List[str]):
    """The test input, expected output and tolerance model.json describes (None where unusable,
    with the reason in `problems`)."""
    meta, x, expected, atol = audit.meta, None, None, 0.0
    try:
        if meta and TEST_INPUT_FILE not in audit.missing:
            x = _read_raw(folder / TEST_INPUT_FILE, meta["test_input"]["shape"], "test input",
                          problems)
        if meta and EXPECTED_OUTPUT_FILE not in audit.missing:
            expected = _read_raw(folder / EXPECTED_OUTPUT_FILE, meta["expected_output"]["shape"],
                                 "expected output", problems)
        atol = float(meta["expected_output"]["atol"]) if meta else 0.0
    except (KeyError, TypeError, ValueError):
        problems.append(f"{MODEL_JSON} lacks the test_input/expected_output shapes or atol")
    return x, expected, atol


def _broken(folder: Path, audit: _Audit, problems: Sequence[str]) -> BnnError:
    if TFLITE_FILE in audit.changed:  # a damaged model (its own content hash) says so first
        Flatbuffer((folder / TFLITE_FILE).read_bytes(),
                   source=str(folder / TFLITE_FILE)).check_content_digest()
    edits = " after moving your edited files out of it" if audit.changed else ""
    return BnnError(f"Broken bundle {folder}: {'; '.join(problems)}. Restore it from a good copy, "
                    f"or write it again with `bnn convert RUN --bundle {folder} --overwrite`"
                    f"{edits}.")


def check_bundle(
    directory: Union[str, os.PathLike], *, timeout: float = DEFAULT_TIMEOUT_S
) -> CheckResult:
    """Checks a bundle's files against its manifest.json, then runs its self-check with LCE's
    interpreter: test input -> expected output.

    Every file bnn wrote must be as it wrote it: the runner's arguments, the scripts, labels,
    model.json, the model, the test tensors and the runner sources. A bundle from before
    manifests (formats 1 and 2) is checked as far as it allows: runner_args.txt and labels.txt
    against model.json, the scripts and runner sources against every version bnn wrote. Other
    files are the user's or the device's: listed in the result, not checked.

    Args:
        directory: A folder written by `write_bundle`.
        timeout: Seconds before the interpreter child is killed.

    Returns:
        A passing `CheckResult`.

    Raises:
        BnnError: listing every missing, edited or malformed file, or the output mismatch
            (difference above the tolerance, or another top-1 class).
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise BnnError(f"No such bundle folder: {folder}.")
    audit = _audit(folder)
    problems = [f"missing {', '.join(audit.missing)}"] if audit.missing else []
    if audit.manifest_problem:
        problems.append(f"{MANIFEST_FILE} {audit.manifest_problem}")
    problems += [*audit.problems, *audit.changed.values()]
    x, expected, atol = _test_tensors(folder, audit, problems)
    if problems or x is None or expected is None:
        raise _broken(folder, audit, problems)

    flatbuffer = Flatbuffer((folder / TFLITE_FILE).read_bytes(), source=str(folder / TFLITE_FILE))
    flatbuffer.check_content_digest()
    actual = np.asarray(isolated_predict(flatbuffer, x, timeout=timeout), np.float32)
    if actual.size != expected.size:
        raise BnnError(
            f"Broken bundle {folder}: the model outputs {actual.size} values but "
            f"{EXPECTED_OUTPUT_FILE} holds {expected.size}."
        )
    actual = actual.reshape(expected.shape)
    max_abs_diff = float(np.max(np.abs(actual - expected)))
    result = CheckResult(
        ok=False,
        max_abs_diff=max_abs_diff,
        atol=atol,
        expected_top1=int(expected.reshape(-1).argmax()),
        actual_top1=int(actual.reshape(-1).argmax()),
        manifest=audit.manifest is not None,
        bundle_sha256=audit.manifest["bundle_sha256"] if audit.manifest else None,
        files_checked=audit.checked,
        files_unchecked=audit.unchecked,
        user_files=audit.user,
        device_files=audit.device,
        class_names=[str(name) for name in (audit.meta or {}).get("class_names") or []],
    )
    result.ok = result.max_abs_diff <= atol and result.expected_top1 == result.actual_top1
    if not result.ok:
        raise BnnError(
            f"Bundle self-check failed for {folder}: the model's output differs from "
            f"{EXPECTED_OUTPUT_FILE} by {result.max_abs_diff:.3g} (atol {atol:.3g}), top-1 class "
            f"{result.label(result.actual_top1)} vs expected "
            f"{result.label(result.expected_top1)}."
        )
    return result
