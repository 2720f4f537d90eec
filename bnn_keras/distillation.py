"""Knowledge distillation: a student classifier trained to match a teacher's softmax.

`distillation_model(student, teacher, ...)` returns the model to `fit`: it has the student's
inputs, outputs and layers (so callbacks, metrics and checkpoints see the student), and while
training it adds `weight * distill_loss(teacher, student)` to the compiled loss, which
`hard_label_weight` scales. The teacher runs in inference mode and is never trained; in
evaluation it is not run at all. Save `student` (the same layers and weights) when done.

When the training images are the same every epoch (no augmentation), the teacher's logits need
computing only once: `teacher_logits_of(teacher, images)` gives them for the whole training set,
and `cached_distillation_model(student, settings)` is the model to fit on
`((images, teacher_logits), labels)`. It adds the same loss as `distillation_model`, without a
teacher pass at every step (a step then costs what the student alone costs).

Two losses:

- `"kl"`: Hinton et al.'s soft targets, `T**2 * KL(softmax(t / T) || softmax(s / T))` for teacher
  logits `t` and student logits `s` at temperature `T` (the `T**2` keeps its gradients the size of
  the hard-label loss's), mixed with the labels' cross-entropy as
  `(1 - weight) * CE + weight * KD`.
- `"distribution"`: ReActNet's distributional loss, `KL(softmax(t) || softmax(s))` alone (weight 1,
  temperature 1: the student learns the teacher's distribution, the labels are not used).

Beside either loss, Real-to-Binary's attention matching (`attention_weight` > 0): the student's
feature maps at the named layers (`attention_layers`, e.g. `block_2_out`..`block_9_out` of
`real-to-binary-net`) learn where the teacher's, at the same layers, put their energy. As
larq-zoo's `AttentionMatchingLossLayer` (larq_zoo/training/knowledge_distillation/
knowledge_distillation.py), which trained the zoo's Real-to-Binary stages with weight 30: the
attention map of a feature map `A` (batch, H, W, C) is `Q = mean_c(A**2)` flattened to H*W values
and divided by its largest, and the term is
`attention_weight * mean over examples and layers of mean_p (Q_s[p] - Q_t[p])**2`.
(The paper, Section 4.2, writes Zagoruyko & Komodakis's attention transfer: maps divided by
their L2 norm, the norms of the differences summed over the layers; the zoo's form is the one
its weight 30 was tuned for.) Both are scale invariant: a student map proportional to the
teacher's costs 0.

Logits are the input of the classifier's final softmax (every registry model ends with one). A
teacher is read from its last layer, before any training: a separate softmax (its input is the
logits), a layer with a softmax activation (e.g. a `Dense(..., activation="softmax")` head: its
log-probabilities, which differ from its logits by a per-example constant that softmax ignores),
or a linear layer (its outputs are the logits). A last layer that does not show which (a
`tf.nn.softmax` op, a Lambda, a rescaling) is told apart on a batch of real images by
`check_teacher_outputs`, whose answer (`teacher_outputs`) `distillation_model` and
`teacher_logits_of` take; any other activation (sigmoid, relu) is refused.

References:
    - [Distilling the Knowledge in a Neural Network](https://arxiv.org/abs/1503.02531)
    - [ReActNet: Towards Precise Binary Neural Network with Generalized
      Activation Functions](https://arxiv.org/abs/2003.03488)
    - [Training Binary Neural Networks with Real-to-Binary
      Convolutions](https://arxiv.org/abs/2003.11535)
    - [Paying More Attention to Attention: Improving the Performance of Convolutional Neural
      Networks via Attention Transfer](https://arxiv.org/abs/1612.03928)
"""

import dataclasses
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from bnn_keras.errors import BnnError

DISTILL_LOSSES: Tuple[str, ...] = ("kl", "distribution")

# log(0) guard for a teacher that gives probabilities only.
_LOG_EPSILON = 1e-20
# What a teacher outputs (`teacher_outputs`).
TEACHER_OUTPUTS: Tuple[str, ...] = ("logits", "probabilities")
# Activations (by function name; tf.nn's are "..._v2") after which a last layer outputs
# probabilities, or logits up to a per-example constant.
_SOFTMAX_ACTIVATIONS = ("softmax", "softmax_v2")
_LOGITS_ACTIVATIONS = ("linear", "log_softmax", "log_softmax_v2")
# How far from [0, 1] and from a sum of 1 a row of probabilities may be: a bfloat16 softmax is
# exact to ~0.4% per value. Real logits of several classes are never all this close to a
# probability distribution on a whole batch.
_PROBABILITY_TOLERANCE = 1e-2
# The attention-matching weight of larq-zoo's Real-to-Binary stages (TrainR2BBFP, TrainR2BBAN
# in larq_zoo/training/multi_stage_experiments.py), for the zoo's form of the term.
DEFAULT_ATTENTION_WEIGHT = 30.0


@dataclasses.dataclass(frozen=True)
class DistillSettings:
    """How the student learns from the teacher.

    Attributes:
        loss: "kl" (soft targets mixed with the labels) or "distribution" (ReActNet's).
        weight: Share of the distillation term in the loss, in (0, 1]; the labels'
            cross-entropy gets `1 - weight`.
        temperature: Softmax temperature T > 0 (finite) of both teacher and student in the term.
        attention_weight: Weight (>= 0, finite) of the attention-matching term, added to the loss
            (0: no attention matching).
        attention_layers: The layers (by name, in both student and teacher, with the same
            spatial size) whose feature maps the attention term matches.
    """

    loss: str = "kl"
    weight: float = 0.5
    temperature: float = 4.0
    attention_weight: float = 0.0
    attention_layers: Tuple[str, ...] = ()

    def __post_init__(self):
        # A list (or a comma-separated string) of names becomes the tuple a frozen class needs.
        layers = self.attention_layers
        if isinstance(layers, str):
            layers = [name.strip() for name in layers.split(",")]
        object.__setattr__(self, "attention_layers", tuple(layers))

    @classmethod
    def for_loss(cls, loss: str, *, weight: Optional[float] = None,
                 temperature: Optional[float] = None, attention_weight: Optional[float] = None,
                 attention_layers: Sequence[str] = ()) -> "DistillSettings":
        """The settings of `loss`, its defaults where `weight`/`temperature` are None.

        "kl" defaults to weight 0.5 and T = 4 (soft and hard targets equally, a temperature in
        the range Hinton et al. found best for small students); "distribution" is weight 1 and
        T = 1 by its definition, and refuses others. With `attention_layers`, the attention
        weight defaults to larq-zoo's 30 (`DEFAULT_ATTENTION_WEIGHT`); without, to 0.

        Raises:
            BnnError: an unknown loss, a value that is not a number, a weight outside (0, 1],
                a temperature <= 0 or not finite, a "distribution" loss with another weight or
                temperature, an attention weight < 0 or not finite, or one > 0 without layers.
        """
        if loss not in DISTILL_LOSSES:
            raise BnnError(f"Unknown `distill_loss` {loss!r}; expected one of: "
                           f"{', '.join(DISTILL_LOSSES)}.")
        for field, value in (("distill_weight", weight), ("distill_temperature", temperature),
                             ("distill_attention_weight", attention_weight)):
            if value is not None:
                _check_number(field, value)
        if loss == "distribution":
            if weight not in (None, 1.0) or temperature not in (None, 1.0):
                raise BnnError(
                    "The distribution loss is KL(teacher || student) at temperature 1 with "
                    "weight 1 (ReActNet); drop `distill_weight` and `distill_temperature`, or "
                    "use `distill_loss` kl.")
            settings = cls("distribution", 1.0, 1.0)
        else:
            settings = cls("kl", 0.5 if weight is None else float(weight),
                           4.0 if temperature is None else float(temperature))
        layers = tuple(attention_layers)
        if attention_weight is None:
            attention_weight = DEFAULT_ATTENTION_WEIGHT if layers else 0.0
        settings = dataclasses.replace(settings, attention_weight=float(attention_weight),
                                       attention_layers=layers)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raises BnnError (naming the field) for a value out of range.

        Infinity and NaN are refused too: click and JSON both read them as floats, and either
        makes the loss NaN at the first step.
        """
        weight = _check_number("distill_weight", self.weight)
        temperature = _check_number("distill_temperature", self.temperature)
        attention_weight = _check_number("distill_attention_weight", self.attention_weight)
        if not 0.0 < weight <= 1.0:  # NaN fails every comparison
            raise BnnError(f"Expected `distill_weight` in (0, 1], got {weight}.")
        if not (temperature > 0.0 and math.isfinite(temperature)):
            raise BnnError(f"Expected `distill_temperature` > 0 and finite, got {temperature}.")
        if not (attention_weight >= 0.0 and math.isfinite(attention_weight)):
            raise BnnError(f"Expected `distill_attention_weight` >= 0 and finite, got "
                           f"{attention_weight}.")
        if any(not isinstance(name, str) or not name for name in self.attention_layers):
            shown = ",".join(map(str, self.attention_layers))
            raise BnnError(f"Expected `distill_attention_layers` to be layer names separated "
                           f"by commas, got {shown!r}.")
        if self.attention_weight > 0.0 and not self.attention_layers:
            raise BnnError("Attention matching needs the layers whose feature maps it matches; "
                           "give `distill_attention_layers` too (e.g. block_2_out,block_3_out), "
                           "or drop `distill_attention_weight`.")

    @property
    def hard_label_weight(self) -> float:
        """The weight of the labels' cross-entropy: `1 - weight`."""
        return 1.0 - self.weight


def _check_number(field: str, value) -> float:
    """`value` as a float, or a BnnError naming `field` for what is not a number (a bool or a
    string would otherwise be read as 1.0 or fail deep inside TensorFlow)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise BnnError(f"Expected `{field}` to be a number, got {value!r}.")
    return float(value)


def soft_target_loss(teacher_logits: tf.Tensor, student_logits: tf.Tensor,
                     temperature: float) -> tf.Tensor:
    """`T**2 * KL(softmax(t / T) || softmax(s / T))` per example (Hinton et al., 2015).

    Args:
        teacher_logits: (batch, classes) logits of the teacher.
        student_logits: (batch, classes) logits of the student.
        temperature: T > 0.

    Returns:
        A (batch,) float32 tensor.
    """
    t = tf.cast(teacher_logits, tf.float32) / temperature
    s = tf.cast(student_logits, tf.float32) / temperature
    teacher_log_p = tf.nn.log_softmax(t, axis=-1)
    kl = tf.reduce_sum(tf.exp(teacher_log_p) * (teacher_log_p - tf.nn.log_softmax(s, axis=-1)),
                       axis=-1)
    return temperature ** 2 * kl


def attention_map(features: tf.Tensor) -> tf.Tensor:
    """The spatial attention of feature maps, as larq-zoo's Real-to-Binary training has it.

    `Q = mean_c(A**2)` over the channels of `A` (Zagoruyko & Komodakis's attention with p = 2,
    averaged), flattened and divided by its largest value (an all-zero map gives zeros).

    Args:
        features: (batch, H, W, C) feature maps.

    Returns:
        A (batch, H * W) float32 tensor with values in [0, 1].
    """
    a = tf.cast(features, tf.float32)
    area = tf.reduce_mean(tf.square(a), axis=-1)
    vector = tf.reshape(area, (tf.shape(a)[0], -1))
    return tf.math.divide_no_nan(vector, tf.reduce_max(vector, axis=-1, keepdims=True))


def attention_loss(teacher_features: Sequence[tf.Tensor],
                   student_features: Sequence[tf.Tensor]) -> tf.Tensor:
    """Real-to-Binary's attention-matching loss per example (larq-zoo's form, unweighted).

    The mean over the layers of `mean_p (Q_s[p] - Q_t[p])**2`, `Q = attention_map(A)` of
    the student's and the teacher's feature maps at each layer (no gradient to the teacher).

    Args:
        teacher_features: One (batch, H, W, C_t) tensor per matched layer.
        student_features: The student's (batch, H, W, C_s) tensors at the same layers (the
            same H and W; the channels may differ).

    Returns:
        A (batch,) float32 tensor.
    """
    per_layer = [
        tf.reduce_mean(tf.square(attention_map(s) - tf.stop_gradient(attention_map(t))),
                       axis=-1)
        for t, s in zip(teacher_features, student_features)
    ]
    return tf.reduce_mean(tf.stack(per_layer, axis=-1), axis=-1)


@tf.keras.utils.register_keras_serializable(package="bnn_keras")
class AttentionMatching(tf.keras.layers.Layer):
    """`weight` x the batch mean of `attention_loss(teacher_features, student_features)`.

    Called on `[teacher_features, student_features]` (two lists of feature maps, in the order
    of `layers`), it returns that scalar loss; `DistillationTerm` adds it while training. It
    holds no teacher: it is serialized by its weight and layer names alone. It computes in
    float32 whatever the dtype policy.

    Args:
        weight: The factor of the loss (>= 0).
        layers: The names of the matched layers (recorded; the caller picks their outputs).
    """

    def __init__(self, weight: float, layers: Sequence[str] = (), **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.weight = float(weight)
        self.layer_names = tuple(layers)

    def call(self, inputs):
        teacher_features, student_features = inputs
        teacher_features, student_features = list(teacher_features), list(student_features)
        if len(teacher_features) != len(student_features) or not teacher_features:
            raise ValueError(f"AttentionMatching needs as many teacher as student feature maps "
                             f"(at least one), got {len(teacher_features)} and "
                             f"{len(student_features)}.")
        return self.weight * tf.reduce_mean(attention_loss(teacher_features, student_features))

    def get_config(self):
        return {**super().get_config(), "weight": self.weight, "layers": list(self.layer_names)}


def _activation_name(layer: tf.keras.layers.Layer) -> Optional[str]:
    """The name of the activation `layer` applies last (a Softmax layer's is "softmax"), or
    None when the layer has none to show (a Lambda, an op, a rescaling, a custom layer, an
    activation object without a name)."""
    if isinstance(layer, tf.keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) if callable(activation) else None


def _final_softmax(model: tf.keras.Model) -> Optional[tf.keras.layers.Layer]:
    """The model's last layer when it is a separate softmax (Activation or Softmax layer)."""
    last = model.layers[-1]
    is_activation = isinstance(last, (tf.keras.layers.Softmax, tf.keras.layers.Activation))
    if is_activation and _activation_name(last) in _SOFTMAX_ACTIVATIONS:
        return last
    return None


def _shown_outputs(model: tf.keras.Model, role: str) -> Optional[str]:
    """What `model`'s last layer shows it outputs ("logits" or "probabilities"), or None when
    it does not show it.

    Raises:
        BnnError: a last layer whose activation gives neither (sigmoid, relu, ...).
    """
    last = model.layers[-1]
    activation = _activation_name(last)
    if activation is None:
        return None
    if activation in _SOFTMAX_ACTIVATIONS:
        return "probabilities"
    if activation in _LOGITS_ACTIVATIONS:
        return "logits"
    raise BnnError(f"The {role} {model.name!r} ends in layer {last.name!r} with the "
                   f"{activation!r} activation, which outputs neither logits nor softmax "
                   "probabilities; distil from a classifier whose last layer is linear (logits) "
                   "or a softmax.")


def _teacher_outputs(teacher: tf.keras.Model, declared: Optional[str]) -> str:
    """What `teacher` outputs: as its last layer shows, else as `declared` (what
    `check_teacher_outputs` found on a batch).

    Raises:
        BnnError: an unknown `declared`, one that contradicts the last layer, or neither.
    """
    if declared is not None and declared not in TEACHER_OUTPUTS:
        raise BnnError(f"Unknown `teacher_outputs` {declared!r}; expected one of: "
                       f"{', '.join(TEACHER_OUTPUTS)}.")
    shown = _shown_outputs(teacher, "teacher")
    last = teacher.layers[-1]
    if shown is None and declared is None:
        raise BnnError(
            f"The teacher {teacher.name!r} ends in layer {last.name!r} "
            f"({type(last).__name__}), which does not show whether it outputs logits or "
            "probabilities; give `teacher_outputs` ('logits' or 'probabilities'; "
            "`check_teacher_outputs(teacher, images)` tells them apart on a batch), or end the "
            "teacher with a linear or softmax layer.")
    if shown is not None and declared not in (None, shown):
        raise BnnError(f"The teacher {teacher.name!r} ends in layer {last.name!r}, which "
                       f"outputs {shown}; `teacher_outputs` {declared!r} contradicts it: drop "
                       "`teacher_outputs`.")
    return shown or declared


def _single_output(model: tf.keras.Model, role: str) -> None:
    if len(model.outputs) != 1:
        raise BnnError(f"The {role} {model.name!r} has {len(model.outputs)} outputs; "
                       "distillation needs a classifier with one.")


def check_teacher_outputs(teacher: tf.keras.Model, images) -> str:
    """What `teacher` outputs, found before training: "logits" or "probabilities".

    Its last layer tells when it can (`classifier_logits`); otherwise its outputs on `images`
    do: rows in [0, 1] that sum to 1 are probabilities, anything else is logits (of which
    log-probabilities are a case). Either way its outputs on `images` must be finite.

    Args:
        teacher: A single-output classifier.
        images: One batch of the real inputs it is to label (an array or tensor).

    Returns:
        The `teacher_outputs` to give `distillation_model` and `teacher_logits_of`.

    Raises:
        BnnError: a teacher with several outputs, a last layer whose activation gives neither
            logits nor probabilities, `images` of another shape than it takes, or non-finite
            outputs on `images`.
    """
    _single_output(teacher, "teacher")
    shown = _shown_outputs(teacher, "teacher")
    _check_batch_fits(teacher, images)
    values = np.asarray(tf.cast(teacher(images, training=False), tf.float32), dtype=np.float64)
    if not np.isfinite(values).all():
        raise BnnError(f"The teacher {teacher.name!r} outputs nan or inf on a batch of the "
                       "images it is to label; distil from a teacher whose outputs are finite "
                       "(evaluate it alone first).")
    if shown is not None:
        return shown
    return "probabilities" if _are_probabilities(values) else "logits"


def _check_batch_fits(teacher: tf.keras.Model, images) -> None:
    """Refuses a batch whose images the teacher does not take (a Keras error otherwise)."""
    expected = tuple(teacher.inputs[0].shape[1:])
    given = tuple(np.shape(images)[1:])
    fits = len(expected) == len(given) and all(
        want is None or want == got for want, got in zip(expected, given))
    if not fits:
        raise BnnError(f"The teacher {teacher.name!r} takes inputs of shape {expected}, the "
                       f"images are {given}; train or export the teacher at the student's "
                       "input size.")


def _are_probabilities(values: np.ndarray) -> bool:
    """Whether every row (along the last axis) of `values` is a probability distribution."""
    tolerance = _PROBABILITY_TOLERANCE
    in_range = (values >= -tolerance).all() and (values <= 1 + tolerance).all()
    return bool(in_range and (np.abs(values.sum(axis=-1) - 1) <= tolerance).all())


def classifier_logits(model: tf.keras.Model, *, role: str = "student",
                      teacher_outputs: Optional[str] = None) -> tf.keras.Model:
    """A model with `model`'s layers that outputs its logits (the input of its final softmax).

    A teacher's logits are read from its last layer: a separate softmax's input; a linear (or
    log-softmax) layer's outputs; the log of a softmax-activation layer's probabilities (its
    logits up to a per-example constant, which softmax ignores). A last layer that does not
    show which needs `teacher_outputs`.

    Args:
        model: A functional classifier.
        role: "student" (must have a separate final softmax: its exact logits are trained) or
            "teacher".
        teacher_outputs: For a teacher whose last layer does not show it: "logits" or
            "probabilities" (`check_teacher_outputs`).

    Returns:
        A functional model sharing `model`'s layers and weights.

    Raises:
        BnnError: a student without a final softmax layer, a model with several outputs, a
            teacher whose last layer gives neither logits nor probabilities, or one whose last
            layer does not show which without `teacher_outputs` (or contradicts it).
    """
    _single_output(model, role)
    softmax = _final_softmax(model)
    name = f"{model.name}_logits"
    if role == "student":
        if softmax is None:
            raise BnnError(f"The student {model.name!r} does not end in a softmax layer; end it "
                           "with tf.keras.layers.Activation('softmax') so its logits can be "
                           "trained.")
        return tf.keras.Model(model.inputs, softmax.input, name=name)
    outputs = _teacher_outputs(model, teacher_outputs)
    if softmax is not None:
        return tf.keras.Model(model.inputs, softmax.input, name=name)
    if outputs == "logits":
        return tf.keras.Model(model.inputs, model.outputs[0], name=name)
    # Probabilities: their log. The exact pre-activation of a softmax-activation layer would
    # need a copy of that layer in the fitted model and its checkpoints, or its variables
    # shared through the wrappers that larq and mixed precision put around them; the log gives
    # the same soft targets to float32 precision (a probability below 1e-20 is read as 1e-20,
    # a tempered share of at most 1e-5 at T = 4).
    log_p = tf.keras.layers.Lambda(lambda p: tf.math.log(tf.cast(p, tf.float32) + _LOG_EPSILON),
                                   name="teacher_log_probabilities")(model.outputs[0])
    return tf.keras.Model(model.inputs, log_p, name=name)


class DistillationTerm(tf.keras.layers.Layer):
    """Identity on the student's logits that, while training, adds the distillation loss.

    Called on `[teacher_input, student_logits, *student_features]`. With a teacher model, the
    layer holds it (frozen: `trainable=False`, run with `training=False`) so that the term is
    part of the fitted model and its checkpoints, and `teacher_input` is the images. With
    attention matching, the teacher model outputs its logits and then its feature maps at
    `settings.attention_layers` (one teacher pass for both terms), and `student_features` are
    the student's at the same layers. Without a teacher model (`teacher_logits=None`),
    `teacher_input` is the teacher's logits, computed beforehand (`teacher_logits_of`). Not
    serializable: save the student.
    """

    def __init__(self, teacher_logits: Optional[tf.keras.Model], settings: DistillSettings,
                 **kwargs):
        super().__init__(**kwargs)
        self.teacher_logits = teacher_logits
        if teacher_logits is not None:
            self.teacher_logits.trainable = False
        self.settings = settings
        self.attention = None
        if settings.attention_weight > 0:
            self.attention = AttentionMatching(settings.attention_weight,
                                               settings.attention_layers,
                                               name="attention_matching")

    def call(self, inputs, training=None):
        teacher_input, student_logits, *student_features = inputs
        if training:  # a Python bool in Keras fit/evaluate: no teacher pass when evaluating
            if self.teacher_logits is None:
                outputs = teacher_input
            else:
                outputs = self.teacher_logits(teacher_input, training=False)
            teacher_features: List[tf.Tensor] = []
            if self.attention is not None:
                outputs, *teacher_features = outputs
            teacher = tf.stop_gradient(outputs)
            term = soft_target_loss(teacher, student_logits, self.settings.temperature)
            self.add_loss(self.settings.weight * tf.reduce_mean(term))
            if self.attention is not None:
                self.add_loss(self.attention([teacher_features, student_features]))
        return student_logits

    def get_config(self):
        raise NotImplementedError(
            "The distillation model is for training only: save its student.")


def check_teacher_fits(student: tf.keras.Model, teacher: tf.keras.Model) -> None:
    """Refuses a teacher whose input shape or number of classes differs from the student's.

    Raises:
        BnnError: one line naming what differs and what to do.
    """
    student_in = tuple(student.inputs[0].shape[1:])
    teacher_in = tuple(teacher.inputs[0].shape[1:])
    if len(teacher.inputs) != 1 or student_in != teacher_in:
        raise BnnError(f"The teacher takes inputs of shape {teacher_in}, the student "
                       f"{student_in}; train or export the teacher at the student's input size.")
    classes = (student.outputs[0].shape[-1], teacher.outputs[0].shape[-1])
    if classes[0] != classes[1]:
        raise BnnError(f"The teacher has {classes[1]} classes, the student {classes[0]}; "
                       "distil from a teacher trained on the same classes.")


def distillation_model(student: tf.keras.Model, teacher: tf.keras.Model,
                       settings: DistillSettings, *,
                       teacher_outputs: Optional[str] = None) -> tf.keras.Model:
    """The model to fit so that `student` learns from `teacher`.

    Compile it with the labels' loss and `loss_weights=[settings.hard_label_weight]` (0 for the
    distribution loss: the labels then only feed the metrics).

    Args:
        student: A functional classifier ending in a softmax layer (trained in place: its
            layers are the returned model's).
        teacher: A classifier with the student's input shape and number of classes (frozen).
        settings: The loss, weight and temperature, and the attention matching.
        teacher_outputs: "logits" or "probabilities", for a teacher whose last layer does not
            show which (`check_teacher_outputs` finds it on a batch of images).

    Returns:
        A functional model with the student's inputs and output probabilities.

    Raises:
        BnnError: the teacher does not fit the student (input shape or classes), either is
            not a single-output classifier as `classifier_logits` needs, or an attention layer
            is missing from either, is not a (batch, H, W, C) feature map or differs in H, W.
    """
    settings.validate()
    student_logits = classifier_logits(student, role="student")
    teacher_logits = classifier_logits(teacher, role="teacher", teacher_outputs=teacher_outputs)
    check_teacher_fits(student, teacher)
    student_features, teacher_features = _attention_features(student, teacher, settings)
    if teacher_features:
        # One teacher pass gives the logits and the feature maps.
        teacher_logits = tf.keras.Model(teacher.inputs,
                                        [teacher_logits.outputs[0], *teacher_features],
                                        name=f"{teacher.name}_logits_and_features")
    images = student.inputs[0]
    logits = DistillationTerm(teacher_logits, settings, name="distillation")(
        [images, student_logits.outputs[0], *student_features])
    probabilities = _final_softmax(student)(logits)
    return tf.keras.Model(student.inputs, probabilities, name=f"{student.name}_distilled")


def teacher_logits_of(teacher: tf.keras.Model, images: tf.data.Dataset, *,
                      teacher_outputs: Optional[str] = None, verbose: int = 0) -> np.ndarray:
    """The teacher's logits (as `classifier_logits` defines them) on every image, in order.

    Args:
        teacher: A single-output classifier.
        images: Batches of images, or of (images, labels) pairs (the labels are ignored), in
            the order the cached pipeline will carry the logits.
        teacher_outputs: "logits" or "probabilities", for a teacher whose last layer does not
            show which (`check_teacher_outputs`).
        verbose: Keras `predict` verbosity (1: a progress bar).

    Returns:
        A (number of images, classes) float32 array.

    Raises:
        BnnError: the teacher is not a single-output classifier whose outputs can be read
            (`classifier_logits`).
    """
    logits = classifier_logits(teacher, role="teacher", teacher_outputs=teacher_outputs).predict(
        images, verbose=verbose)
    return np.asarray(logits, dtype=np.float32)


def cached_distillation_model(student: tf.keras.Model,
                              settings: DistillSettings) -> tf.keras.Model:
    """The model to fit when the teacher's logits are given with the images.

    Its inputs are the student's images and the teacher's logits of those images (a float32
    (batch, classes) input named "teacher_logits", from `teacher_logits_of`); fit it on
    `((images, teacher_logits), labels)` and compile it as `distillation_model`'s. While
    training it adds the same loss as `distillation_model` with the teacher whose logits these
    are; when evaluating, the logits input is not read (give zeros).

    Args:
        student: A functional classifier ending in a softmax layer (trained in place).
        settings: The loss, weight and temperature; no attention matching.

    Returns:
        A functional model with inputs [images, teacher logits] and the student's output
        probabilities.

    Raises:
        BnnError: attention matching asked for (it needs the teacher's feature maps at every
            step), or a student without a final softmax layer.
    """
    settings.validate()
    if settings.attention_weight > 0:
        raise BnnError("Attention matching needs the teacher's feature maps at every step, "
                       "which cached logits do not give; drop `distill_cache` or the "
                       "attention matching.")
    student_logits = classifier_logits(student, role="student")
    classes = student.outputs[0].shape[-1]
    given = tf.keras.Input((classes,), dtype="float32", name="teacher_logits")
    logits = DistillationTerm(None, settings, name="distillation")(
        [given, student_logits.outputs[0]])
    probabilities = _final_softmax(student)(logits)
    return tf.keras.Model([*student.inputs, given], probabilities,
                          name=f"{student.name}_distilled")


def _attention_features(student: tf.keras.Model, teacher: tf.keras.Model,
                        settings: DistillSettings) -> Tuple[List[tf.Tensor], List[tf.Tensor]]:
    """The student's and the teacher's outputs at `settings.attention_layers` (none when the
    attention weight is 0), checked to be feature maps of the same spatial size."""
    if settings.attention_weight <= 0:
        return [], []
    student_features, teacher_features = [], []
    for name in settings.attention_layers:
        pair = [_layer_output(model, role, name)
                for model, role in ((student, "student"), (teacher, "teacher"))]
        shapes = [tuple(tensor.shape) for tensor in pair]
        for role, shape in zip(("student", "teacher"), shapes):
            if len(shape) != 4:
                raise BnnError(
                    f"Layer {name!r} of the {role} outputs shape {shape[1:]}, not feature "
                    "maps (height, width, channels); give `distill_attention_layers` of "
                    "convolutional blocks.")
        if shapes[0][1:3] != shapes[1][1:3]:
            (sh, sw), (th, tw) = shapes[0][1:3], shapes[1][1:3]
            raise BnnError(
                f"Layer {name!r} outputs {sh}x{sw} feature maps in the student and {th}x{tw} "
                "in the teacher; attention matching needs the same spatial size at each of "
                "`distill_attention_layers`.")
        student_features.append(pair[0])
        teacher_features.append(pair[1])
    return student_features, teacher_features


def _layer_output(model: tf.keras.Model, role: str, name: str) -> tf.Tensor:
    """The output of `model`'s layer `name` in its functional graph, or a BnnError."""
    try:
        layer = model.get_layer(name)
    except ValueError:
        raise BnnError(f"The {role} {model.name!r} has no layer {name!r} to match attention "
                       "at; give `distill_attention_layers` that both the student and the "
                       "teacher have (`bnn summary` lists a model's layers).") from None
    try:
        return layer.output
    except AttributeError:  # a layer called more than once has no single output
        raise BnnError(f"Layer {name!r} of the {role} {model.name!r} is used more than once; "
                       "give `distill_attention_layers` with one output each.") from None
