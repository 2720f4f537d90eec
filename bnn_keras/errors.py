"""The one exception family for user-facing failures."""

import errno
import os
import re
from typing import Optional


class BnnError(Exception):
    """A failure the user can fix; its message says what was wrong and what to do.

    The CLI prints it as one line, `Error: <message>`, and exits with code 2.
    """


class KerasVersionError(BnnError, ImportError):
    """`tf.keras` is Keras 3, which larq and Larq Compute Engine do not support."""


def first_line(exc: BaseException, limit: Optional[int] = None) -> str:
    """The first line of an exception's message (TensorFlow's run to many lines), at most
    `limit` characters; the exception's type name when the message is empty.

    Used where another library's failure becomes one line of ours: the cause is kept, its
    stack of context is not.
    """
    lines = str(exc).strip().splitlines()
    line = lines[0].strip() if lines else type(exc).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


# errno values that mean "the storage refuses the write", not a bug, and what to do about each.
_STORAGE_ERRNOS = {
    errno.EROFS: "choose another output location",
    errno.EACCES: "check the permissions or choose another output location",
    errno.EPERM: "check the permissions or choose another output location",
    errno.ENOSPC: "free space or choose another output location",
    errno.EDQUOT: "free space or choose another output location",
    errno.EFBIG: "choose another output location",
    errno.ENAMETOOLONG: "choose a shorter path",
}
# TensorFlow's C++ file system reports the same failures as tf.errors.* with the strerror text
# after the path ("PATH; Read-only file system"); ResourceExhaustedError is also out-of-memory,
# so the text decides, not the class.
_TF_STORAGE_TEXT = {
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
    "Operation not permitted": errno.EPERM,
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
}
_TF_STORAGE_ERRORS = ("PermissionDeniedError", "ResourceExhaustedError", "UnknownError",
                      "FailedPreconditionError")
# "[{{function_node ...}}] PATH; Read-only file system [Op:SaveV2]"
_TF_PATH = re.compile(r"(?:^|\s)([^\s;]+); (" + "|".join(_TF_STORAGE_TEXT) + ")")
# h5py: "Unable to synchronously create file (unable to open file: name = 'PATH', errno = 30, ..."
_H5_PATH = re.compile(r"name = '([^']+)'")
# bnn_keras.files.atomic_path writes ".NAME.partial-PID.SUFFIX" next to NAME.SUFFIX.
_PARTIAL = re.compile(r"^\.(.+)\.partial-\d+(\.[^.]*)?$")


def _shown_path(path: str) -> str:
    """The file the user asked for, not the temporary name it was being written under."""
    parts = os.path.normpath(path).split(os.sep)
    for i, part in enumerate(parts):
        # tf.train.Checkpoint writes "PREFIX_temp/part-...tempstate<N>" before renaming.
        if part.endswith("_temp"):
            return os.sep.join(parts[:i] + [part[: -len("_temp")]])
        if ".tempstate" in part:
            return os.sep.join(parts[:i] + [part.split(".tempstate")[0]])
    match = _PARTIAL.match(parts[-1])
    if match:
        parts[-1] = match.group(1) + (match.group(2) or "")
    return os.sep.join(parts)


def storage_error_message(exc: BaseException) -> Optional[str]:
    """One line for a write the storage refused (read-only, permissions, disk full), else None.

    Understands `OSError` (Python, h5py) and TensorFlow's `tf.errors.*` for the same causes, and
    follows `raise ... from` / during-handling chains, so library code and the CLI can turn any
    of them into a `BnnError`.

    Args:
        exc: Any exception.

    Returns:
        E.g. "cannot write out/model.keras: Read-only file system (choose another output
        location)", or None when `exc` is not such a failure.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        message = _one_storage_error(exc)
        if message:
            return message
        exc = exc.__cause__ or exc.__context__
    return None


def _one_storage_error(exc: BaseException) -> Optional[str]:
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        code, path = exc.errno, exc.filename
        if path is None:
            match = _H5_PATH.search(text)
            path = match.group(1) if match else None
    elif type(exc).__name__ in _TF_STORAGE_ERRORS and type(exc).__module__.startswith(
            "tensorflow"):
        match = _TF_PATH.search(text)
        if not match:
            return None
        path, code = match.group(1).strip(), _TF_STORAGE_TEXT[match.group(2)]
    else:
        return None
    where = _shown_path(os.fsdecode(path)) if path else "the output"
    return f"cannot write {where}: {os.strerror(code)} ({_STORAGE_ERRNOS[code]})"
