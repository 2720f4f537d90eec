"""The public float CNNs of benchmarks/float_cnns.py, binarized: issue 31's structural targets
(every binary conv an LceBconv2d; ResNet-20 with at least 85% of its MACs binary), checked
without training."""

import pytest

import bnn_keras
from tests.benchmarks.conftest import load_script


@pytest.fixture(scope="module")
def float_cnns():
    return load_script("float_cnns.py", "float_cnns")


@pytest.mark.parametrize("name, params, binary_convs, min_fraction", [
    ("mnist-convnet", 34_826, 1, 0.90),
    ("vgg-style", 889_834, 3, 0.98),
    ("resnet20", 274_154, 20, 0.99),
])
def test_a_public_float_cnn_binarizes_to_lce_binary_convs(float_cnns, name, params,
                                                          binary_convs, min_fraction):
    from convert.converter import convert_to_flatbuffer

    float_model = float_cnns.FLOAT_CNNS[name]((28, 28, 1), 10)  # Fashion-MNIST's input
    assert float_model.count_params() == params  # the examples' architectures, unchanged
    bnn, report = bnn_keras.binarize(float_model, shortcuts="auto")
    assert report.binary_convs == binary_convs
    assert report.binary_mac_fraction >= min_fraction
    flatbuffer = convert_to_flatbuffer(bnn)
    assert flatbuffer.ops["LceBconv2d"] == report.binary_convs == report.lce_bconvs
    low, high = report.size_range
    assert low <= len(flatbuffer) <= high


def test_at_cifar_size_the_cnns_have_the_examples_parameter_counts(float_cnns):
    """The counts the Keras examples print for their CIFAR-10 models (32x32x3, 10 classes):
    ResNet20v1 274,442 (cifar10_resnet.py), the VGG-style stack 1,250,858 (cifar10_cnn.py)."""
    assert float_cnns.resnet20((32, 32, 3), 10).count_params() == 274_442
    assert float_cnns.vgg_style((32, 32, 3), 10).count_params() == 1_250_858
