"""VGG-Face (Parkhi et al., 2015) in Keras 3, with the paper's layer names.

The model takes raw decoded pixels — uint8, S×S×3, **BGR** — and does its own preprocessing in the
first layer (`preprocess`: a float32 built-in Rescaling that subtracts the mean), so no caller can
feed it the wrong scale, order or mean, and a saved model loads with plain Keras. Cut points are layer names (conv1_1 … conv5_3, pool1 … pool5, fc6, fc7, fc8, prob),
never indices.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import ops

from pipeline.schema import DEFAULT_IMAGE_SIZE

# The mean image of the weights' training set, per channel in the model's input order (B, G, R).
# The weights come from the Caffe / MatConvNet release, whose average image is R 129.1863,
# G 104.7624, B 93.5940; Caffe feeds BGR, so B gets 93.5940. (The Torch demo script that ships
# with VGG_FACE.t7 subtracts the three numbers in the swapped R/B order; that is its bug, not the
# network's convention.)
VGG_MEAN_BGR = (93.5940, 104.7624, 129.1863)



@dataclass(frozen=True)
class VGGWidths:
    """Channel widths of a VGG-Face-structured network: 13 convolutions, then fc6, fc7, fc8."""

    conv: tuple[int, ...]
    fc6: int
    fc7: int
    fc8: int

    def __post_init__(self) -> None:
        if len(self.conv) != 13:
            raise ValueError(f"VGGWidths.conv needs 13 widths, got {len(self.conv)}")


FULL_WIDTHS = VGGWidths(conv=(64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512),
                        fc6=4096, fc7=4096, fc8=2622)
# Same topology, narrow layers: tests and the demo use it so that they run in seconds on a CPU.
SLIM_WIDTHS = VGGWidths(conv=(4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32),
                        fc6=64, fc7=64, fc8=16)

# Convolutions per block (VGG-16): blocks 1-2 have two, blocks 3-5 three.
BLOCK_SIZES = (2, 2, 3, 3, 3)
CONV_NAMES = tuple(f"conv{b + 1}_{i + 1}" for b, n in enumerate(BLOCK_SIZES) for i in range(n))
POOL_NAMES = tuple(f"pool{b + 1}" for b in range(len(BLOCK_SIZES)))
DENSE_NAMES = ("fc6", "fc7", "fc8")
# The layers that carry weights, in order: what the loaders copy, by name.
WEIGHTED_NAMES = CONV_NAMES + DENSE_NAMES


def _layer_names() -> tuple[str, ...]:
    names = ["preprocess"]
    for b, n in enumerate(BLOCK_SIZES):
        for i in range(n):
            names += [f"conv{b + 1}_{i + 1}", f"relu{b + 1}_{i + 1}"]
        names.append(f"pool{b + 1}")
    names += ["flatten", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8", "prob"]
    return tuple(names)


# Every layer after the input ("image"), in order.
LAYER_NAMES = _layer_names()


def mean_subtraction(name: str = "preprocess") -> keras.layers.Layer:
    """uint8 BGR pixels -> float32 pixels minus VGG_MEAN_BGR; always float32, whatever the policy.

    A built-in Rescaling (x * 1 + offset, per channel), so saved models need no custom class.
    Kept in float32 under mixed precision: in bfloat16, 255 - 129.1863 would already lose the
    fraction, and the cast is cheap next to the first convolution.
    """
    return keras.layers.Rescaling(scale=1.0, offset=[-m for m in VGG_MEAN_BGR], dtype="float32", name=name)


@keras.saving.register_keras_serializable(package="gender_classifier")
class MeanSubtract(keras.layers.Layer):
    """The mean subtraction of model files written before it became a built-in Rescaling: kept
    registered so that those files still load with this project. Same function, bit for bit."""

    def __init__(self, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)

    def call(self, inputs):
        mean = ops.convert_to_tensor(VGG_MEAN_BGR, dtype="float32")
        return ops.cast(inputs, "float32") - mean

    def compute_output_shape(self, input_shape):
        return input_shape


def build_vggface(widths: VGGWidths = FULL_WIDTHS, image_size: int = DEFAULT_IMAGE_SIZE) -> keras.Model:
    """The VGG-Face network (random weights) under the active dtype policy; input uint8 BGR."""
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 (five 2×2 poolings), got {image_size}")
    image = keras.Input(shape=(image_size, image_size, 3), dtype="uint8", name="image")
    x = mean_subtraction()(image)
    conv_widths = iter(widths.conv)
    for b, n in enumerate(BLOCK_SIZES):
        for i in range(n):
            suffix = f"{b + 1}_{i + 1}"
            # 3×3, stride 1, zero padding 1 (Torch's padW = padH = 1) == "same" at stride 1.
            x = keras.layers.Conv2D(next(conv_widths), 3, padding="same", name=f"conv{suffix}")(x)
            x = keras.layers.ReLU(name=f"relu{suffix}")(x)
        x = keras.layers.MaxPooling2D(pool_size=2, strides=2, name=f"pool{b + 1}")(x)
    # NHWC flatten: (H, W, C) order. The t7 loader permutes fc6's rows from Torch's (C, H, W).
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(widths.fc6, name="fc6")(x)
    x = keras.layers.ReLU(name="relu6")(x)
    x = keras.layers.Dropout(0.5, name="drop6")(x)
    x = keras.layers.Dense(widths.fc7, name="fc7")(x)
    x = keras.layers.ReLU(name="relu7")(x)
    x = keras.layers.Dropout(0.5, name="drop7")(x)
    x = keras.layers.Dense(widths.fc8, name="fc8")(x)
    # Softmax in float32 even under mixed precision: probabilities must sum to 1.
    prob = keras.layers.Activation("softmax", dtype="float32", name="prob")(x)
    return keras.Model(image, prob, name="vggface")


def widths_of(model: keras.Model) -> VGGWidths:
    """The channel widths of a built VGG-Face model, read from its layers' weight shapes."""
    conv = tuple(int(model.get_layer(name).kernel.shape[-1]) for name in CONV_NAMES)
    fc6, fc7, fc8 = (int(model.get_layer(name).kernel.shape[-1]) for name in DENSE_NAMES)
    return VGGWidths(conv=conv, fc6=fc6, fc7=fc7, fc8=fc8)
