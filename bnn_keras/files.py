"""Output files that are complete or absent, never half-written."""

import contextlib
import hashlib
import ctypes
import functools
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from bnn_keras.errors import BnnError, storage_error_message

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yields a temporary path next to `path`; renames it into place only on success.

    The temporary name keeps the suffix (Keras picks the format from `.keras`/`.h5`) and lives
    in the same folder, so the final `os.replace` is atomic. On any exception, including
    KeyboardInterrupt, the temporary file is removed and `path` is left as it was.

    Args:
        path: The final file path.

    Yields:
        The temporary path to write to.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.partial-{os.getpid()}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def file_sha256(path: PathLike) -> str:
    """The sha256 of the file `path` (hex), read in 1 MiB blocks; OSError as open() raises."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Writes `data` to `path` atomically and returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: PathLike, text: str) -> Path:
    """Writes `text` to `path` atomically and returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: PathLike, obj: Any) -> Path:
    """Writes `obj` as indented JSON to `path` atomically and returns the path."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# ----------------------------------------------------------------------------------------------
# Checking output locations before the long work starts

def _existing_ancestor(path: Path) -> Path:
    """The nearest folder of `path` (itself excluded) that exists: where a new file would go."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): say "permission denied"
        return False


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_writable_folder(folder: PathLike, *, what: str = "--output") -> Path:
    """Raises `BnnError` unless files can be created in `folder` (or its nearest existing
    ancestor, where the missing folders would be made).

    Permission bits alone do not tell (root ignores them; a read-only mount does not show in
    them), so a temporary file is created and removed.

    Returns:
        The existing folder that was probed.
    """
    folder = Path(folder)
    probe_in = folder if folder.exists() else _existing_ancestor(folder)
    if not probe_in.is_dir():
        raise BnnError(f"Cannot write {what} into {folder}: {probe_in} is not a folder.")
    if not os.access(probe_in, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(probe_in) else "permission denied"
        raise BnnError(f"Cannot write {what} into {probe_in}: {reason}; choose a writable "
                       "folder.")
    try:
        handle, name = tempfile.mkstemp(prefix=".bnn-write-probe-", dir=probe_in)
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BnnError(f"Cannot write {what} into {probe_in}: {reason}; choose a writable "
                       "folder.") from None
    return probe_in


def _refuse_link(given: Path, what: str, kind: str) -> None:
    # Replacing a link (os.replace) would turn it into a regular file or folder of its own.
    if os.path.islink(given):
        raise BnnError(f"{what} {given} is a symbolic link; bnn does not replace a link with a "
                       f"{kind}: give the path it points to, or another path.")


def _refuse_inputs(resolved: Path, given: Path, reads: Iterable[PathLike], what: str) -> None:
    for read in reads:
        read = Path(read)
        target = read.resolve()
        same = resolved == target
        if not same and resolved.exists() and target.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(resolved, target)
        if same or (target.is_dir() and _inside(resolved, target)):
            raise BnnError(f"{what} {given} would overwrite {read}, which this command reads; "
                           "choose another path.")


def check_output_file(
    path: PathLike,
    *,
    reads: Iterable[PathLike] = (),
    overwrite: bool = False,
    what: str = "--output",
) -> Path:
    """Checks, before any long work, that writing the file `path` destroys nothing.

    Refused: a path that is (or resolves to) one of `reads` or lies inside a folder of `reads`;
    a symbolic link (replacing it would turn the link into a regular file); an existing path that
    is not a regular file (folder, device such as /dev/null, FIFO, socket); an existing file
    unless `overwrite`; and a folder where no file can be created.

    Args:
        path: The output file.
        reads: Files and folders the command reads (its inputs).
        overwrite: Whether an existing regular file may be replaced.
        what: How the user named the output (e.g. "--output"), for the messages.

    Returns:
        The output path as given.

    Raises:
        BnnError: one line naming `what`, the path and what to do.
    """
    given = Path(path)
    _refuse_link(given, what, "file")
    resolved = given.resolve()
    _refuse_inputs(resolved, given, reads, what)
    if given.exists():
        mode = given.stat().st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise BnnError(f"{what} {given} is {kind}; give the path of a new or existing file.")
        if not overwrite:
            raise BnnError(f"{what} {given} already exists; pass `overwrite` to replace it, or "
                           "choose another path.")
    check_writable_folder(given.parent, what=what)
    return given


def check_output_folder(
    path: PathLike,
    *,
    reads: Iterable[PathLike] = (),
    overwrite: bool = False,
    what: str = "`output`",
    replaceable: Optional[Callable[[Path], bool]] = None,
    kind: str = "folder",
) -> Path:
    """Checks, before any long work, that (re)placing the folder `path` destroys nothing.

    Refused: a symbolic link; a folder that holds, or is, one of `reads` (replacing it would
    delete them); an existing path that is not a folder; an existing folder unless `overwrite`,
    and even then unless `replaceable(path)` says it is one we wrote (so that a mistyped path
    never deletes an unrelated folder); and a parent where nothing can be created.

    Args:
        path: The output folder.
        reads: Files and folders the command reads or writes elsewhere.
        overwrite: Whether an existing folder may be replaced.
        what: How the user named the output (e.g. "`bundle`"), for the messages.
        replaceable: Whether an existing folder may be replaced with `overwrite` (default: any).
        kind: What the folder is, for the messages (e.g. "bnn bundle").

    Returns:
        The folder path as given.

    Raises:
        BnnError: one line naming `what`, the path and what to do.
    """
    given = Path(path)
    _refuse_link(given, what, "folder")
    resolved = given.resolve()
    for read in reads:
        if _inside(Path(read).resolve(), resolved):
            raise BnnError(f"{what} {given} would replace {read}, which this command reads or "
                           "writes; choose another folder.")
    if given.exists():
        if not given.is_dir():
            raise BnnError(f"{what} {given} exists and is not a folder; choose a new folder.")
        if not overwrite:
            raise BnnError(f"{what} {given} already exists; pass `overwrite` to replace it, or "
                           "choose another folder.")
        if replaceable is not None and not replaceable(given):
            raise BnnError(f"{what} {given} is not an empty folder or a {kind}; `overwrite` "
                           f"replaces only a {kind}: choose another folder.")
    check_writable_folder(given.parent, what=what)
    return given


def check_free_space(paths_and_sizes: Iterable[Tuple[PathLike, int]], *,
                     what: str = "the output") -> None:
    """Raises `BnnError` when a file system has less free space than the files going there.

    Args:
        paths_and_sizes: (output path, estimated bytes) pairs; sizes on one file system add up.
        what: How to name the outputs in the message.
    """
    needed: Dict[int, List[Any]] = {}
    for path, size in paths_and_sizes:
        folder = _existing_ancestor(Path(path))
        entry = needed.setdefault(folder.stat().st_dev, [folder, 0])
        entry[1] += int(size)
    for folder, size in needed.values():
        free = shutil.disk_usage(folder).free
        if free < size:
            raise BnnError(f"Not enough free space for {what} in {folder}: {free / 2**20:.1f} MiB "
                           f"free, about {size / 2**20:.1f} MiB needed; free some space or "
                           "choose another folder.")


@contextlib.contextmanager
def storage_errors(path: PathLike, *, what: str = "the output") -> Iterator[None]:
    """Turns a write refused by the storage (full, read-only, permissions) into a `BnnError`
    naming `path`; other errors pass through unchanged."""
    try:
        yield
    except OSError as exc:
        if storage_error_message(exc) is None:
            raise
        raise BnnError(f"Could not write {what} {path}: {exc.strerror}; nothing was replaced. "
                       "Free some space or choose a writable folder.") from None


# ----------------------------------------------------------------------------------------------
# Replacing a folder in one step

def link_or_copy(source: PathLike, target: PathLike) -> None:
    """Makes `target` a hard link to the file `source`, or a copy of it (with its permissions and
    times) where the file system has no hard links; a symbolic link is linked or copied as a link.

    A hard link is the same file, so carrying a large file (a built binary, a source checkout)
    into a new folder costs no space or time; FAT on a USB stick has none, and gets a copy. Fits
    `shutil.copytree(..., copy_function=link_or_copy)`.
    """
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


# renameat2(2) flags and "the current folder" for its folder descriptors (linux/fs.h, fcntl.h).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.lru_cache(maxsize=None)
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library older than glibc 2.28, or none to load
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(first: PathLike, second: PathLike) -> bool:
    """Swaps two paths in one step (Linux's renameat2 with RENAME_EXCHANGE), so that no moment
    is without either; False where the OS or file system has no such call."""
    renameat2 = _renameat2()
    return renameat2 is not None and renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0


def swap_into_place(new: PathLike, final: PathLike) -> None:
    """Puts the folder `new` at `final`, where an earlier folder is; the earlier one ends at
    `new`'s path, for the caller to remove (after a failure, both are as they were).

    One atomic exchange where the OS has it (Linux's renameat2), so that `final` is never
    missing; else two renames, the first undone if the second fails or is interrupted. `new`
    must be on the same file system as `final` (next to it, under a temporary name).

    Args:
        new: The complete new folder.
        final: The path of the folder it replaces.
    """
    new, final = Path(new), Path(final)
    if _exchange(new, final):
        return
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    os.replace(final, old)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(old, final)
        raise
    os.replace(old, new)
