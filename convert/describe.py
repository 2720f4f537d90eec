"""What a .tflite holds, read from the file alone (`bnn inspect FILE.tflite`).

A flatbuffer converted elsewhere (LCE's own converter, another tool) is described as well as one
of bnn's: its size, its operators (LceBconv2d first), its input and output, the float ops LCE
left between binary convolutions, and the bnn metadata when it carries some.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Union

from bnn_keras.errors import BnnError
from convert.flatbuffer import Flatbuffer

# TFLite's file identifier, at bytes 4-8 of every flatbuffer.
FILE_IDENTIFIER = b"TFL3"


def is_flatbuffer(path: Union[str, Path]) -> bool:
    """Whether the file at `path` carries TFLite's file identifier (whatever its name)."""
    try:
        with open(path, "rb") as f:
            return f.read(8)[4:8] == FILE_IDENTIFIER
    except OSError:
        return False


def describe_flatbuffer(path: Union[str, Path]) -> Dict[str, Any]:
    """The facts of the .tflite at `path`, as JSON-serialisable values.

    Raises:
        BnnError: no such file, or not a readable flatbuffer.
    """
    if not Path(path).is_file():
        raise BnnError(f"No such file: {path}.")
    flatbuffer = Flatbuffer.from_file(path)
    ops = flatbuffer.ops
    input_type, output_type = flatbuffer.io_types()
    shape, _ = flatbuffer.input_spec()
    return {
        "file": str(path),
        "size_bytes": len(flatbuffer),
        "lce_bconv2d": ops.get("LceBconv2d", 0),
        "ops": dict(sorted(ops.items(), key=lambda item: (-item[1], item[0]))),
        "input": {"shape": [1, *shape], "type": input_type},
        "output": {"values": flatbuffer.output_count(), "type": output_type},
        "missed_fusions": flatbuffer.missed_fusions(),
        "metadata": flatbuffer.metadata,
    }


def format_description(info: Dict[str, Any]) -> List[str]:
    """`describe_flatbuffer`'s facts as aligned "name  value" lines."""
    meta = info["metadata"] or {}
    rows = [
        ("file", info["file"]),
        ("size", f"{info['size_bytes']:,} bytes ({info['size_bytes'] / 2**20:.2f} MiB)"),
        ("LceBconv2d", str(info["lce_bconv2d"])),
        ("ops", ", ".join(f"{name} {count}" for name, count in info["ops"].items())),
        ("input", f"{'x'.join(map(str, info['input']['shape']))} {info['input']['type']}"),
        ("output", f"{info['output']['values']} values, {info['output']['type']}"),
        ("missed fusions", "; ".join(info["missed_fusions"]) or "none"),
    ]
    if meta:
        classes = meta.get("class_names") or []
        shown = ", ".join(classes[:10]) + (f", ... ({len(classes)} in all)"
                                            if len(classes) > 10 else "")
        rows += [("model", str(meta.get("model", "-"))),
                 ("data set", str(meta.get("dataset") or "-")),
                 ("classes", shown or "-"),
                 ("normalization", json.dumps(meta.get("normalization"))),
                 ("pixel max", f"{meta['pixel_max']:g}" if meta.get("pixel_max") else "-"),
                 ("bnn / LCE", f"{meta.get('bnn_version', '?')} / "
                               f"{meta.get('lce_version', '?')}")]
    else:
        rows.append(("metadata", "none (`bnn evaluate` and `bnn predict` need the bnn "
                                 "metadata: convert with class names and normalization)"))
    width = max(len(name) for name, _ in rows)
    return [f"{name.ljust(width)}  {value}" for name, value in rows]
