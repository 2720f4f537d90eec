"""Knowledge distillation: a student classifier trained to match a teacher's softmax.

`distillation_model(student, teacher, ...)` returns the model to `fit`: it has the student's
inputs, outputs and layers (so callbacks, metrics and checkpoints see the student), and while
training it adds `weight * distill_loss(teacher, student)` to the compiled loss, which
`hard_label_weight` scales. The teacher runs in inference mode and is never trained; in
evaluation it is not run at all. Save `student` (the same layers and weights) when done.

Two losses:

- `"kl"`: Hinton et al.'s soft targets, `T**2 * KL(softmax(t / T) || softmax(s / T))` for teacher
  logits `t` and student logits `s` at temperature `T` (the `T**2` keeps its gradients the size of
  the hard-label loss's), mixed with the labels' cross-entropy as
  `(1 - weight) * CE + weight * KD`.
- `"distribution"`: ReActNet's distributional loss, `KL(softmax(t) || softmax(s))` alone (weight 1,
  temperature 1: the student learns the teacher's distribution, the labels are not used).

Logits are the input of the classifier's final softmax (every registry model ends with one). A
teacher without a separate softmax layer (e.g. a `Dense(..., activation="softmax")` head) gives
log-probabilities instead, which differ from its logits by a per-example constant that softmax
ignores.

References:
    - [Distilling the Knowledge in a Neural Network](https://arxiv.org/abs/1503.02531)
    - [ReActNet: Towards Precise Binary Neural Network with Generalized
      Activation Functions](https://arxiv.org/abs/2003.03488)
    - [Training Binary Neural Networks with Real-to-Binary
      Convolutions](https://arxiv.org/abs/2003.11535)
"""

import dataclasses
from typing import Optional, Tuple

import tensorflow as tf

from bnn_keras.errors import BnnError

DISTILL_LOSSES: Tuple[str, ...] = ("kl", "distribution")

# log(0) guard for a teacher that gives probabilities only.
_LOG_EPSILON = 1e-20


@dataclasses.dataclass(frozen=True)
class DistillSettings:
    """How the student learns from the teacher.

    Attributes:
        loss: "kl" (soft targets mixed with the labels) or "distribution" (ReActNet's).
        weight: Share of the distillation term in the loss, in (0, 1]; the labels'
            cross-entropy gets `1 - weight`.
        temperature: Softmax temperature T > 0 of both teacher and student in the term.
    """

    loss: str = "kl"
    weight: float = 0.5
    temperature: float = 4.0

    @classmethod
    def for_loss(cls, loss: str, *, weight: Optional[float] = None,
                 temperature: Optional[float] = None) -> "DistillSettings":
        """The settings of `loss`, its defaults where `weight`/`temperature` are None.

        "kl" defaults to weight 0.5 and T = 4 (soft and hard targets equally, a temperature in
        the range Hinton et al. found best for small students); "distribution" is weight 1 and
        T = 1 by its definition, and refuses others.

        Raises:
            BnnError: an unknown loss, a weight outside (0, 1], a temperature <= 0, or a
                "distribution" loss with another weight or temperature.
        """
        if loss not in DISTILL_LOSSES:
            raise BnnError(f"Unknown `distill_loss` {loss!r}; expected one of: "
                           f"{', '.join(DISTILL_LOSSES)}.")
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
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raises BnnError (naming the field) for a value out of range."""
        if not 0.0 < self.weight <= 1.0:
            raise BnnError(f"Expected `distill_weight` in (0, 1], got {self.weight}.")
        if not self.temperature > 0.0:
            raise BnnError(f"Expected `distill_temperature` > 0, got {self.temperature}.")

    @property
    def hard_label_weight(self) -> float:
        """The weight of the labels' cross-entropy: `1 - weight`."""
        return 1.0 - self.weight


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


def _final_softmax(model: tf.keras.Model) -> Optional[tf.keras.layers.Layer]:
    """The model's last layer when it is a separate softmax (Activation or Softmax layer)."""
    last = model.layers[-1]
    if isinstance(last, tf.keras.layers.Softmax):
        return last
    if isinstance(last, tf.keras.layers.Activation) and (
            getattr(last.activation, "__name__", "") == "softmax"):
        return last
    return None


def classifier_logits(model: tf.keras.Model, *, role: str = "student") -> tf.keras.Model:
    """A model with `model`'s layers that outputs its logits (the input of its final softmax).

    Args:
        model: A functional classifier.
        role: "student" (must have a separate final softmax: its exact logits are trained) or
            "teacher" (log-probabilities are accepted when it has none).

    Returns:
        A functional model sharing `model`'s layers and weights.

    Raises:
        BnnError: a student without a final softmax layer, or a model with several outputs.
    """
    if len(model.outputs) != 1:
        raise BnnError(f"The {role} {model.name!r} has {len(model.outputs)} outputs; "
                       "distillation needs a classifier with one.")
    softmax = _final_softmax(model)
    if softmax is not None:
        return tf.keras.Model(model.inputs, softmax.input, name=f"{model.name}_logits")
    if role == "student":
        raise BnnError(f"The student {model.name!r} does not end in a softmax layer; end it with "
                       "tf.keras.layers.Activation('softmax') so its logits can be trained.")
    log_p = tf.keras.layers.Lambda(lambda p: tf.math.log(tf.cast(p, tf.float32) + _LOG_EPSILON),
                                   name="teacher_log_probabilities")(model.outputs[0])
    return tf.keras.Model(model.inputs, log_p, name=f"{model.name}_logits")


class DistillationTerm(tf.keras.layers.Layer):
    """Identity on the student's logits that, while training, adds the distillation loss.

    Holds the teacher (frozen: `trainable=False`, run with `training=False`), so that the
    term is part of the fitted model and its checkpoints. Not serializable: save the student.
    """

    def __init__(self, teacher_logits: tf.keras.Model, settings: DistillSettings, **kwargs):
        super().__init__(**kwargs)
        self.teacher_logits = teacher_logits
        self.teacher_logits.trainable = False
        self.settings = settings

    def call(self, inputs, training=None):
        images, student_logits = inputs
        if training:  # a Python bool in Keras fit/evaluate: no teacher pass when evaluating
            teacher = tf.stop_gradient(self.teacher_logits(images, training=False))
            term = soft_target_loss(teacher, student_logits, self.settings.temperature)
            self.add_loss(self.settings.weight * tf.reduce_mean(term))
        return student_logits

    def get_config(self):
        raise NotImplementedError(
            "The distillation model is for training only: save its student.")


def distillation_model(student: tf.keras.Model, teacher: tf.keras.Model,
                       settings: DistillSettings) -> tf.keras.Model:
    """The model to fit so that `student` learns from `teacher`.

    Compile it with the labels' loss and `loss_weights=[settings.hard_label_weight]` (0 for the
    distribution loss: the labels then only feed the metrics).

    Args:
        student: A functional classifier ending in a softmax layer (trained in place: its
            layers are the returned model's).
        teacher: A classifier with the student's input shape and number of classes (frozen).
        settings: The loss, weight and temperature.

    Returns:
        A functional model with the student's inputs and output probabilities.

    Raises:
        BnnError: the teacher does not fit the student (input shape or classes), or either is
            not a single-output classifier as `classifier_logits` needs.
    """
    settings.validate()
    student_logits = classifier_logits(student, role="student")
    teacher_logits = classifier_logits(teacher, role="teacher")
    student_in = tuple(student.inputs[0].shape[1:])
    teacher_in = tuple(teacher.inputs[0].shape[1:])
    if len(teacher.inputs) != 1 or student_in != teacher_in:
        raise BnnError(f"The teacher takes inputs of shape {teacher_in}, the student "
                       f"{student_in}; train or export the teacher at the student's input size.")
    classes = (student.outputs[0].shape[-1], teacher.outputs[0].shape[-1])
    if classes[0] != classes[1]:
        raise BnnError(f"The teacher has {classes[1]} classes, the student {classes[0]}; "
                       "distil from a teacher trained on the same classes.")
    images = student.inputs[0]
    logits = DistillationTerm(teacher_logits, settings, name="distillation")(
        [images, student_logits.outputs[0]])
    probabilities = _final_softmax(student)(logits)
    return tf.keras.Model(student.inputs, probabilities, name=f"{student.name}_distilled")
