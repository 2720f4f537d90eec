"""Output files that are complete or absent, never half-written."""

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Union

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
