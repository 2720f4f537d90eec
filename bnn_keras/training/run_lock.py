"""One process owns a run folder: an OS lock held for the whole of a training run.

Two `bnn train -o DIR` started together would otherwise both pass the "folder must be empty"
check and then overwrite each other's model, config and checkpoints. `fcntl.flock` on a lock
file inside the folder is released by the kernel when the owning process ends, however it
ends (even SIGKILL), so a lock is never left stale; the PID written into the file only serves
to name the owner in the refusal message.
"""

import errno
import fcntl
import os
from pathlib import Path
from typing import Optional, Union

from bnn_keras.errors import BnnError

LOCK_FILE = ".bnn.lock"
# The temporary names `bnn_keras.files.atomic_path` writes to; any left in a folder whose lock
# we hold belong to a process that died while writing.
PARTIAL_PATTERN = ".*.partial-*"


class RunFolderBusyError(BnnError):
    """Another process holds the run folder's lock."""


class RunFolderLock:
    """Context manager holding an exclusive lock on `run_dir` (created when `create`).

    On entry, leftovers of an earlier owner that died mid-write (`.NAME.partial-PID` files)
    are removed: while we hold the lock nobody else can be writing them. On exit the lock file
    is removed and the lock released; a folder this lock created that is then empty (the run
    failed before writing anything) is removed too, so a refused run leaves no trace.

    Args:
        run_dir: The run folder.
        create: Create the folder (and its parents) when it does not exist.

    Raises:
        RunFolderBusyError: another process holds the lock (the message names its PID).
        BnnError: the folder cannot be created or the lock file cannot be written.
    """

    def __init__(self, run_dir: Union[str, os.PathLike], *, create: bool = True):
        self.run_dir = Path(run_dir)
        self.create = create
        self._fd: Optional[int] = None
        self._created = False

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_FILE

    def __enter__(self) -> "RunFolderLock":
        if not self.run_dir.is_dir():
            if not self.create:
                raise BnnError(f"No such run folder: {self.run_dir}.")
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BnnError(
                    f"Cannot create the run folder {self.run_dir}: {exc.strerror}; choose a "
                    "writable location."
                ) from None
            self._created = True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            self._remove_if_unused()
            raise BnnError(
                f"Cannot create the lock file {self.path}: {exc.strerror}; choose a writable "
                "run folder."
            ) from None
        if not _try_lock(fd):
            os.close(fd)
            raise _busy(self.run_dir)
        if not _same_file(fd, self.path):
            # The previous owner removed the lock file (and its empty folder) between our open
            # and our lock: the lock we hold guards nothing.
            os.close(fd)
            raise RunFolderBusyError(
                f"Run folder {self.run_dir} changed while it was being locked; try again."
            )
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        for leftover in self.run_dir.glob(PARTIAL_PATTERN):
            if leftover.is_file():
                leftover.unlink()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            # Removed while still locked: a process that opened the file just before sees, once
            # it holds the lock, that the path no longer names it (`_same_file`) and refuses.
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # releases the flock
            self._fd = None
        self._remove_if_unused()

    def _remove_if_unused(self) -> None:
        """Removes a folder this lock created when nothing but the lock file is in it."""
        if not self._created:
            return
        try:
            if not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()
        except OSError:
            pass  # someone else put something there: leave the folder alone


def check_not_busy(run_dir: Union[str, os.PathLike]) -> None:
    """Raises `RunFolderBusyError` when a live process holds `run_dir`'s lock; never creates
    or changes a file (the check before a new run refuses a used folder)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody holds the folder
    try:
        if not _try_lock(fd):
            raise _busy(Path(run_dir))
    finally:
        os.close(fd)  # also releases the lock we may just have taken


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _busy(run_dir: Path) -> RunFolderBusyError:
    try:
        pid = (run_dir / LOCK_FILE).read_text().strip()
    except OSError:
        pid = ""
    return RunFolderBusyError(
        f"Run folder {run_dir} is in use by another bnn process "
        f"(PID {pid if pid.isdigit() else 'unknown'}); wait for it to end, or choose another "
        "run folder."
    )


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def is_run_folder_empty(run_dir: Union[str, os.PathLike]) -> bool:
    """True when `run_dir` holds nothing but (possibly) our lock file."""
    return all(p.name == LOCK_FILE for p in Path(run_dir).iterdir())


def refuse_used_folder(run_dir: Union[str, os.PathLike], *, locked_by_us: bool = False) -> None:
    """Refuses a run folder that another process holds or that is not empty (a new run's).

    Args:
        run_dir: The folder a new run would write (it exists).
        locked_by_us: This process holds its lock already (only the lock file may be there).

    Raises:
        RunFolderBusyError: another process holds it.
        BnnError: it holds files: the message points to `bnn train --resume`.
    """
    if not locked_by_us:
        check_not_busy(run_dir)
    if not is_run_folder_empty(run_dir):
        raise BnnError(
            f"Run folder {run_dir} already exists and is not empty; choose another `run_dir`, "
            f"or continue its run with `bnn train --resume {run_dir}`."
        )
