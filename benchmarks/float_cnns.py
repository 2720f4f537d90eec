"""Float CNNs that bnn did not design, from well-known public Keras examples, for `binarize`.

Each is written here as its example defines it (layer by layer, the same filters, kernels,
activations, pooling, dropout and heads), with the input and class count as parameters:

- `mnist_convnet`: Keras' "Simple MNIST convnet" (keras.io/examples/vision/mnist_convnet,
  fchollet): two 3x3 convs (32, 64) with ReLU, max pooling, dropout 0.5, a softmax classifier.
- `vgg_style`: the VGG-style stack of the Keras repository's `examples/cifar10_cnn.py`
  (Keras 2.x): conv 32, conv 32, pool, dropout 0.25, conv 64, conv 64, pool, dropout 0.25,
  dense 512, dropout 0.5, softmax.
- `resnet20`: ResNet-20 (He et al. 2016, "Deep Residual Learning", the CIFAR variant with
  n = 3) as the Keras repository's `examples/cifar10_resnet.py` builds it (`resnet_v1`,
  depth 20): a 3x3 conv-BN-ReLU stem, three stages of three basic blocks (16, 32, 64 filters;
  the first block of stages 2 and 3 strides 2 with a 1x1 projection shortcut), an average
  pooling over the 8x8 (here: whatever is left) map and a softmax classifier.

They serve `bnn_keras.binarize`'s benchmark and tests: binarized, each should keep its first
conv and its classifier float and run every other conv as an LceBconv2d.
"""

from typing import Tuple

import bnn_keras  # noqa: F401  (tf-keras 2 before TensorFlow)
import tensorflow as tf

L = tf.keras.layers


def mnist_convnet(input_shape: Tuple[int, int, int] = (28, 28, 1),
                  num_classes: int = 10) -> tf.keras.Model:
    """Keras' "Simple MNIST convnet"."""
    return tf.keras.Sequential([
        tf.keras.Input(input_shape),
        L.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        L.MaxPooling2D(pool_size=(2, 2)),
        L.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        L.MaxPooling2D(pool_size=(2, 2)),
        L.Flatten(),
        L.Dropout(0.5),
        L.Dense(num_classes, activation="softmax"),
    ], name="mnist_convnet")


def vgg_style(input_shape: Tuple[int, int, int] = (32, 32, 3),
              num_classes: int = 10) -> tf.keras.Model:
    """The VGG-style stack of Keras' `examples/cifar10_cnn.py`."""
    return tf.keras.Sequential([
        tf.keras.Input(input_shape),
        L.Conv2D(32, (3, 3), padding="same"), L.Activation("relu"),
        L.Conv2D(32, (3, 3)), L.Activation("relu"),
        L.MaxPooling2D(pool_size=(2, 2)), L.Dropout(0.25),
        L.Conv2D(64, (3, 3), padding="same"), L.Activation("relu"),
        L.Conv2D(64, (3, 3)), L.Activation("relu"),
        L.MaxPooling2D(pool_size=(2, 2)), L.Dropout(0.25),
        L.Flatten(),
        L.Dense(512), L.Activation("relu"), L.Dropout(0.5),
        L.Dense(num_classes), L.Activation("softmax"),
    ], name="vgg_style")


def _resnet_layer(x, filters: int, kernel_size: int = 3, strides: int = 1,
                  activation: str = "relu", batch_normalization: bool = True):
    """`resnet_layer` of `cifar10_resnet.py`: conv, then BN and activation when asked."""
    x = L.Conv2D(filters, kernel_size=kernel_size, strides=strides, padding="same",
                 kernel_initializer="he_normal",
                 kernel_regularizer=tf.keras.regularizers.l2(1e-4))(x)
    if batch_normalization:
        x = L.BatchNormalization()(x)
    if activation is not None:
        x = L.Activation(activation)(x)
    return x


def resnet20(input_shape: Tuple[int, int, int] = (32, 32, 3),
             num_classes: int = 10) -> tf.keras.Model:
    """ResNet-20 as `cifar10_resnet.py`'s `resnet_v1(depth=20)` builds it."""
    inputs = tf.keras.Input(input_shape)
    filters = 16
    x = _resnet_layer(inputs, filters)
    for stack in range(3):
        for block in range(3):
            strides = 2 if stack > 0 and block == 0 else 1
            y = _resnet_layer(x, filters, strides=strides)
            y = _resnet_layer(y, filters, activation=None)
            if stack > 0 and block == 0:
                # The projection shortcut: a 1x1 conv to the new width and size, no BN.
                x = _resnet_layer(x, filters, kernel_size=1, strides=strides, activation=None,
                                  batch_normalization=False)
            x = L.Activation("relu")(L.add([x, y]))
        filters *= 2
    x = L.AveragePooling2D(pool_size=x.shape[1:3])(x)
    y = L.Flatten()(x)
    outputs = L.Dense(num_classes, activation="softmax", kernel_initializer="he_normal")(y)
    return tf.keras.Model(inputs, outputs, name="resnet20")


FLOAT_CNNS = {"mnist-convnet": mnist_convnet, "vgg-style": vgg_style, "resnet20": resnet20}
