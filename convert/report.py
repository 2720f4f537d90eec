"""The conversion report: what the flatbuffer holds and how faithful it is."""

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf

from bnn_keras import model_stats
from convert.flatbuffer import Flatbuffer, FlatbufferLike
from convert.verify import Verification


@dataclasses.dataclass
class ConversionReport:
    """Facts about one conversion, for the table `bnn convert` prints and for `--json`.

    Attributes:
        path: Where the flatbuffer was written (None before writing).
        target: The conversion target.
        size_bytes: Flatbuffer size.
        float32_size_bytes: The same weights stored at 32 bit.
        ops: Operator histogram of the flatbuffer.
        lce_bconvs: LceBconv2d ops in the flatbuffer.
        binary_layers: Binary convolutions in the Keras model (each should be one LceBconv2d).
        binary_mac_fraction: Share of the model's multiply-accumulates that are binary.
        missed_fusions: Float ops left between a binary conv and the next binarization.
        verification: Keras vs flatbuffer agreement (None when not verified).
        verified_on: What the verification inputs were.
        path: Where the flatbuffer was written.
        bundle: The Raspberry Pi bundle folder, when one was written.
        bundle_check: The bundle's self-check result.
        int8: With `--int8`: sizes and accuracy of the float32 and int8 conversions.
        rebuilt_classes: Model subclasses of a model file that could not be imported and were
            converted from their functional graph (`convert.loading.LoadedModel`).
    """

    target: str
    size_bytes: int
    float32_size_bytes: int
    ops: Dict[str, int]
    lce_bconvs: int
    binary_layers: int
    binary_mac_fraction: float
    missed_fusions: List[str]
    verification: Optional[Verification] = None
    verified_on: str = ""
    path: Optional[str] = None
    bundle: Optional[str] = None
    bundle_check: Optional[str] = None
    int8: Optional[Dict[str, Any]] = None
    rebuilt_classes: Tuple[str, ...] = ()

    @property
    def compression_ratio(self) -> float:
        return self.float32_size_bytes / self.size_bytes

    def to_dict(self) -> Dict[str, Any]:
        out = {
            key: value for key, value in dataclasses.asdict(self).items() if key != "verification"
        }
        out["compression_ratio"] = round(self.compression_ratio, 3)
        if self.verification is not None:
            v = self.verification
            out["verification"] = {
                "samples": v.samples, "inputs": self.verified_on,
                "max_abs_diff": v.max_abs_diff, "median_abs_diff": v.median_abs_diff,
                "top1_agreement": v.top1_agreement,
            }
        return out

    def format(self) -> str:
        """A short human-readable table."""
        rows = [
            ("file", self.path or "(not written)"),
            ("target", self.target),
            ("size", f"{self.size_bytes:,} bytes"),
            ("float32 equivalent", f"{self.float32_size_bytes:,} bytes "
                                   f"({self.compression_ratio:.2f}x larger)"),
            ("LceBconv2d / binary convs", f"{self.lce_bconvs} / {self.binary_layers}"),
            ("binarized MACs", f"{self.binary_mac_fraction:.1%}"),
            ("ops", ", ".join(f"{k} {v}" for k, v in
                              sorted(self.ops.items(), key=lambda kv: (-kv[1], kv[0])))),
            ("missed fusions", "; ".join(self.missed_fusions) or "none"),
        ]
        if self.verification is not None:
            v = self.verification
            rows.append(("Keras vs .tflite", f"{v.samples} {self.verified_on}: max |diff| "
                         f"{v.max_abs_diff:.3g} (median input {v.median_abs_diff:.2g}), top-1 "
                         f"agreement {v.top1_agreement:.2%}"))
        if self.int8:
            q = self.int8
            line = (f"{q['float32_size_bytes']:,} -> {q['int8_size_bytes']:,} bytes; top-1 "
                    f"agreement with float32 {q['top1_agreement_int8_vs_float32']:.2%}")
            if "int8_accuracy" in q:
                line += (f"; accuracy {q['float32_accuracy']:.2%} (float32) vs "
                         f"{q['int8_accuracy']:.2%} (int8)")
            rows.append(("int8 vs float32", line))
        if self.bundle:
            rows.append(("bundle", f"{self.bundle} (self-check {self.bundle_check}; "
                                   "see its README.md)"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def conversion_report(
    model: tf.keras.Model,
    flatbuffer: FlatbufferLike,
    *,
    target: str,
    verification: Optional[Verification] = None,
    verified_on: str = "",
) -> ConversionReport:
    """Builds the report for `flatbuffer`, converted from `model`."""
    flatbuffer = Flatbuffer.wrap(flatbuffer)
    stats = model_stats.model_summary(model)
    ops = flatbuffer.ops
    return ConversionReport(
        target=target,
        size_bytes=len(flatbuffer),
        float32_size_bytes=stats.float32_size_bytes,
        ops=dict(ops),
        lce_bconvs=ops.get("LceBconv2d", 0),
        binary_layers=stats.lce_bconvs,
        binary_mac_fraction=stats.binary_mac_fraction,
        missed_fusions=flatbuffer.missed_fusions(),
        verification=verification,
        verified_on=verified_on,
    )
