"""Per-channel normalization of raw pixel values, `(x - mean) / std`.

The statistics come from the training split (`DataSplits.normalization`) and are written to the
run folder, so that conversion checks and prediction apply exactly what training applied.
"""

import dataclasses
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from bnn_keras.errors import BnnError


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel `(x - mean) / std` on raw pixel values."""

    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def apply(self, images):
        """Normalizes a float tensor or array of images (channels last)."""
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return (images - mean) / std

    def to_dict(self) -> Dict[str, List[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Dict[str, Sequence[float]]) -> "Normalization":
        return cls(mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]))

    @classmethod
    def from_images(cls, images: np.ndarray) -> "Normalization":
        """Estimates mean/std per channel from an (N, H, W, C) array."""
        images = np.asarray(images, np.float64)
        std = images.std(axis=(0, 1, 2))
        # A constant channel would divide by zero; 1.0 leaves it centred but unscaled.
        std = np.where(std > 0, std, 1.0)
        return cls(mean=tuple(images.mean(axis=(0, 1, 2)).tolist()), std=tuple(std.tolist()))

    @classmethod
    def from_image_stream(cls, images: Iterable[np.ndarray]) -> "Normalization":
        """Estimates mean/std per channel from (H, W, C) arrays that may differ in size.

        Raises:
            BnnError: `images` is empty.
        """
        total = total_sq = None
        count = 0
        for image in images:
            pixels = np.asarray(image, np.float64).reshape(-1, np.shape(image)[-1])
            total = pixels.sum(0) if total is None else total + pixels.sum(0)
            total_sq = (pixels**2).sum(0) if total_sq is None else total_sq + (pixels**2).sum(0)
            count += len(pixels)
        if not count:
            raise BnnError("The data set is empty.")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        std = np.where(std > 0, std, 1.0)
        return cls(mean=tuple(mean.tolist()), std=tuple(std.tolist()))
