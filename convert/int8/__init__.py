"""int8 for the float layers of a binary network, and int8 model input/output.

LCE keeps binary convolutions as `LceBconv2d` whatever the precision of the rest; the float parts
(stem and transition convolutions, BatchNorms that do not fold into a convolution, pooling, the
classifier) become int8 TFLite builtins only when every tensor between them carries a value range.
TFLite takes those ranges from `FakeQuantWithMinMaxVars` nodes (quantization-aware training), so
`prepare_int8` rebuilds a trained model with a `FakeQuant` layer after each tensor that needs one
(`fake_quant`), first balancing the ranges that concatenations share (`range_balance`), then
calibrates the ranges on representative data and optionally fine-tunes with them in place
(`calibration`), and centres the binarization thresholds (`thresholds`). `convert_int8` converts
the result with LCE (`convert.converter`), with float32 or int8 model I/O; the I/O scale and zero
point are read back from the flatbuffer itself (`convert.flatbuffer.Flatbuffer.io_quantization`,
`quantize_inputs`, `dequantize_outputs`).
"""

from convert.int8.calibration import FineTune
from convert.int8.fake_quant import (
    FAKE_QUANT_SUFFIX,
    FakeQuant,
    fake_quant_points,
    shared_range_groups,
)
from convert.int8.prepare import convert_int8, prepare_int8
from convert.int8.range_balance import RESCALE_SUFFIX, RangeBalance, balance_concat_ranges
from convert.int8.thresholds import centre_binarization_thresholds

__all__ = [
    "FAKE_QUANT_SUFFIX",
    "FakeQuant",
    "FineTune",
    "RESCALE_SUFFIX",
    "RangeBalance",
    "balance_concat_ranges",
    "centre_binarization_thresholds",
    "convert_int8",
    "fake_quant_points",
    "prepare_int8",
    "shared_range_groups",
]
