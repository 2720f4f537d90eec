"""Image files: their size from the header, a completeness check without decoding, decoding.

A folder data set can hold a million files. Decoding each one up front to find a damaged one
costs 0.2 ms (a small PNG) to 1.5 ms (a 500x375 JPEG) per file; `looks_complete` instead checks
what each format says must be there, and only a file that fails it is decoded, by TensorFlow, to
say what is wrong with it. The structures checked: PNG, every chunk's length and CRC-32 up to
IEND (W3C, "Portable Network Graphics (PNG) Specification", 2nd ed., 2003, section 5); JPEG, the
end-of-image marker FFD9 (ITU-T T.81, 1992, annex B); GIF, the trailer byte 3B (CompuServe,
"Graphics Interchange Format Version 89a", 1990, section 27); BMP, the file size that its
header's offset, width, height and bit depth give (Microsoft BITMAPINFOHEADER), as TensorFlow's
own BMP decoder requires.
"""

import os
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from bnn_keras.errors import BnnError, first_line

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# JPEG start-of-frame markers (baseline, progressive, lossless...): they carry the image size.
# C4 (Huffman tables), C8 (reserved) and CC (arithmetic coding) share the range but are not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_file_size(path: Union[str, os.PathLike]) -> Optional[Tuple[int, int]]:
    """(width, height) of a PNG, JPEG, GIF or BMP file, read from its header without decoding.

    Decoding a 12000x12000 image takes gigabytes; this reads a few bytes (JPEG: the segment
    headers up to the frame header), so callers can refuse such a file first.

    Args:
        path: An image file.

    Returns:
        (width, height), or None when the header is not one of these formats or is cut short
        (the decoder then reports the file).
    """
    with open(path, "rb") as f:
        head = f.read(26)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
            return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
        if head[:2] == b"BM" and len(head) >= 26:
            if int.from_bytes(head[14:18], "little") == 12:  # OS/2 BITMAPCOREHEADER
                return int.from_bytes(head[18:20], "little"), int.from_bytes(head[20:22], "little")
            # BITMAPINFOHEADER and later; a negative height means rows stored top-down.
            width = int.from_bytes(head[18:22], "little", signed=True)
            return abs(width), abs(int.from_bytes(head[22:26], "little", signed=True))
        if head[:2] != b"\xff\xd8":
            return None
        f.seek(2)
        while True:  # JPEG: walk the segments (FF marker, 2-byte length) to the frame header
            marker = f.read(2)
            while marker[:1] == b"\xff" and marker[1:2] == b"\xff":  # fill bytes
                marker = marker[1:] + f.read(1)
            if len(marker) < 2 or marker[0] != 0xFF:
                return None
            if marker[1] == 0x01 or 0xD0 <= marker[1] <= 0xD8:  # segments without a length
                continue
            length = f.read(2)
            if len(length) < 2:
                return None
            if marker[1] in _JPEG_SOF:
                frame = f.read(5)  # precision, height, width
                if len(frame) < 5:
                    return None
                return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
            f.seek(int.from_bytes(length, "big") - 2, os.SEEK_CUR)


def looks_complete(path: Union[str, os.PathLike]) -> bool:
    """Whether a PNG, JPEG, GIF or BMP file is whole by its own structure, without decoding it.

    Reads the head and the end of the file (all of a PNG, for its checksums). A file that passes
    decodes with TensorFlow unless its compressed data is damaged in a way that the format does
    not checksum (JPEG, GIF); a file that fails may still decode (e.g. bytes after a JPEG's end
    marker), so the caller decodes it to decide.

    Args:
        path: An image file.

    Returns:
        True when the structure is complete; False for a damaged, unreadable or empty file and
        for any other format.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(30)
            if head.startswith(_PNG_SIGNATURE):
                return _png_chunks_complete(head + f.read())
            size = os.fstat(f.fileno()).st_size
            if head[:2] == b"\xff\xd8" and size >= 4:
                f.seek(-2, os.SEEK_END)
                return f.read(2) == b"\xff\xd9"
            if head[:6] in (b"GIF87a", b"GIF89a"):
                f.seek(-1, os.SEEK_END)
                return f.read(1) == b";"
            if head[:2] == b"BM" and len(head) >= 30:
                return size == _bmp_size(head)
    except OSError:
        pass
    return False


def _png_chunks_complete(raw: bytes) -> bool:
    """Every chunk (length, type, data, CRC-32 of type and data) is whole, up to IEND."""
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(raw):
        end = pos + 12 + int.from_bytes(raw[pos:pos + 4], "big")
        if end > len(raw) or zlib.crc32(raw[pos + 4:end - 4]) != int.from_bytes(
                raw[end - 4:end], "big"):
            return False
        if raw[pos + 4:pos + 8] == b"IEND":
            return True
        pos = end
    return False


def _bmp_size(head: bytes) -> Optional[int]:
    """The file size TensorFlow's BMP decoder expects: pixel data offset + padded rows."""
    offset = int.from_bytes(head[10:14], "little", signed=True)
    width = int.from_bytes(head[18:22], "little", signed=True)
    height = int.from_bytes(head[22:26], "little", signed=True)
    channels = int.from_bytes(head[28:30], "little") // 8
    if channels not in (1, 3, 4):
        return None
    row_size = (8 * channels * width + 31) // 32 * 4  # rows are padded to 4 bytes
    return offset + row_size * abs(height)


def _tf_reason(exc: Exception) -> str:
    """"Invalid PNG data, size 6210" from TensorFlow's "{{function_node ...}} Invalid PNG data,
    size 6210 [Op:DecodeImage] name: " (the op's own words, without its plumbing)."""
    text = first_line(exc)
    text = text.split("}}", 1)[-1] if text.startswith("{{") else text
    return text.split(" [Op:", 1)[0].strip().rstrip(".")


def decoded_images(files: Sequence[Tuple[Path, int]], decode) -> Iterator[np.ndarray]:
    """`decode(path, label)` of each file, eagerly, as NumPy arrays.

    Raises:
        BnnError: a file cannot be read or decoded; the message names it.
    """
    for path, label in files:
        try:
            image, _ = decode(tf.constant(str(path)), tf.constant(label, tf.int32))
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
                tf.errors.PermissionDeniedError, tf.errors.DataLossError) as exc:
            raise BnnError(
                f"Image file {path} cannot be decoded ({_tf_reason(exc)}); remove or replace it "
                f"(PNG, JPEG or BMP)."
            ) from None
        yield image.numpy()


def decode_file(channels: int, height: Optional[int], width: Optional[int]):
    def decode(path: tf.Tensor, label: tf.Tensor):
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=channels, expand_animations=False
        )
        image = tf.cast(image, tf.float32)
        # Images of another size are brought to the set's native size (that of the first one).
        if height is not None:
            image = tf.image.resize(image, (height, width), method="bilinear")
            image.set_shape((height, width, channels))
        return image, label

    return decode


def check_decodable(paths: Iterable[Path]) -> None:
    """Decodes only the files that do not `looks_complete`, to name the first that TensorFlow
    cannot decode.

    Raises:
        BnnError: a file cannot be read or decoded; the message names it.
    """
    decode = decode_file(0, None, None)
    for path in paths:
        if not looks_complete(path):
            for _ in decoded_images([(path, 0)], decode):
                pass  # decoded_images raises for a file TensorFlow cannot decode
