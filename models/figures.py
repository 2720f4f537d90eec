"""The figures `bnn models` lists, computed once per bnn source and input, then read back.

Each figure (parameters, binarized-MAC fraction, 1-bit size, ratio to float32) needs the model
built, and building the 21 registry models at 224 px takes about 30 s. Nothing in them changes
until the code that builds or measures the models does, so they are kept in a JSON file in the
user's cache folder (`$BNN_CACHE_DIR`, else `$XDG_CACHE_HOME/bnn`, else `~/.cache/bnn`) whose
name carries a hash of the bnn version and of every source file of `models` and the plugin
(`bnn_keras`, the training application left out): an edited or upgraded install never reads
figures of another one. `bnn models --rebuild` computes them again. A cache folder that cannot
be written only costs the time: the figures are computed as before.
"""

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

CACHE_ENV = "BNN_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class ModelFigures:
    """What `bnn models` shows of one model at one input size.

    Attributes:
        params: Keras's count of its weights (`count_params`).
        binary_mac_fraction: Share of its multiply-accumulates that are binary.
        size_bytes: Weight storage with binary weights at 1 bit, the others at 32 bits.
        compression_ratio: float32 storage over `size_bytes`.
        too_small: Why the model cannot be built at this input (None when it can).
    """

    params: int = 0
    binary_mac_fraction: float = 0.0
    size_bytes: int = 0
    compression_ratio: float = 0.0
    too_small: Optional[str] = None


def cache_dir() -> Path:
    """Where the figures are kept: `$BNN_CACHE_DIR`, else `$XDG_CACHE_HOME/bnn`, else
    `~/.cache/bnn`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnn"


def source_key() -> str:
    """A hash of the bnn version and of the source files the figures depend on."""
    import bnn_keras
    import models

    digest = hashlib.sha256(bnn_keras.__version__.encode())
    for package in (models, bnn_keras):
        root = Path(package.__file__).parent
        for path in sorted(root.glob("*.py")):  # the plugin's modules, not its training app
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _cache_file(input_shape: Sequence[int], num_classes: int) -> Path:
    shape = "x".join(str(d) for d in input_shape)
    return cache_dir() / f"models-{source_key()}-{shape}-{num_classes}.json"


def model_figures(names: Iterable[str], input_shape: Sequence[int], num_classes: int, *,
                  rebuild: bool = False,
                  progress: Optional[Callable[[List[str]], Iterable[str]]] = None,
                  overrides: Optional[Dict[str, object]] = None,
                  ) -> Dict[str, ModelFigures]:
    """The figures of the registry models `names` at `input_shape` and `num_classes`.

    Args:
        names: Registry names.
        input_shape: Input (height, width, channels).
        num_classes: Classifier size.
        rebuild: Compute every figure again (and replace the cached ones).
        progress: Wraps the list of models to build (e.g. a progress bar).
        overrides: Options of the models' builders (`create_model`'s overrides): such figures
            are computed, never cached.

    Returns:
        {name: figures}.
    """
    names = list(names)
    if overrides:
        return {name: _compute(name, input_shape, num_classes, overrides)
                for name in (progress(names) if progress else names)}
    path = _cache_file(input_shape, num_classes)
    cached: Dict[str, ModelFigures] = {} if rebuild else _read(path)
    missing = [name for name in names if name not in cached]
    if missing:
        for name in (progress(missing) if progress else missing):
            cached[name] = _compute(name, input_shape, num_classes)
        _write(path, cached)
    return {name: cached[name] for name in names}


def _compute(name: str, input_shape: Sequence[int], num_classes: int,
             overrides: Optional[Dict[str, object]] = None) -> ModelFigures:
    import tensorflow as tf

    import models
    from models.input_size import is_input_too_small

    try:
        stats = models.describe(name, input_shape=tuple(input_shape), num_classes=num_classes,
                                **(overrides or {}))
    except ValueError as exc:
        if not is_input_too_small(exc):
            raise
        return ModelFigures(too_small=str(exc))
    finally:
        tf.keras.backend.clear_session()  # 14 ImageNet-size graphs would pile up in memory
    return ModelFigures(params=int(stats.total_params),
                        binary_mac_fraction=float(stats.binary_mac_fraction),
                        size_bytes=int(stats.size_bytes),
                        compression_ratio=float(stats.compression_ratio))


def _read(path: Path) -> Dict[str, ModelFigures]:
    """The cached figures, or none when the file is missing or not what this module writes."""
    try:
        values = json.loads(path.read_text())
        return {name: ModelFigures(**figures) for name, figures in values.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _write(path: Path, figures: Dict[str, ModelFigures]) -> None:
    from bnn_keras import files

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(path, {name: dataclasses.asdict(f) for name, f in sorted(figures.items())})
    except OSError:
        pass  # a read-only home or a full disk: the figures were computed all the same
