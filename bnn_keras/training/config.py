"""What a run is asked to do (`TrainConfig`) and what its folder records (`RunRecord`).

`TrainConfig` holds every option of a training run; each field carries its help text and
choices, and `bnn train`'s options are generated from them. `RunRecord` is the run folder's
config.json: the options plus what the run resolved and measured (the recipe, the precision,
the input shape and normalization, the class names, the library versions). config.json is
written and read only through `RunRecord`, which validates it once, so the rest of the code
reads typed fields instead of dictionary keys.

config.json layouts (`format_version`):
    1   bnn 0.1 and 0.2: the same keys as 2, without `format_version`.
    2   bnn 0.3: adds `format_version`. Every key of version 1 is still written, so bnn 0.2
        reads these files too.
    3   adds `weights` (the file the run started from), `weights_sha256` and `model_variant`
        (the variant the model was built as). Written only by runs that started from a
        weights file, which every other run still writes as version 2: a bnn that reads up to
        version 2 would resume such a run with its default variant, another function with
        the same weights, so it must refuse the file instead.
    4   adds `teacher` (the run folder or model file a run distils from), `teacher_sha256`
        (of its model file), `distill_loss`, `distill_weight` and `distill_temperature`, and
        `float_copy` and `input_activation` (a run of the float copy of the model), and
        `distill_attention_weight` and `distill_attention_layers` (Real-to-Binary's attention
        matching). Written only by runs that use them (others write 3 or 2 as before): a bnn
        that reads up to version 3 would resume such a run without its teacher, or as the
        binary model. `distill_cache` (the teacher's logits computed once) came later in the
        same layout: a bnn without it resumes such a run with the teacher run at every step,
        which is the same loss.
    5   adds `keep` (which epoch model.keras holds). Written only by runs that keep the best
        epoch (others write 4, 3 or 2 as before): a bnn that reads up to version 4 would end
        such a run with its last epoch in model.keras.
    6   adds `normalize_mean`, `normalize_std` and `normalize_pixel_max` (the normalization
        the user gives instead of the training split's; `bnn binarize` passes the float
        model's). Written only by runs that
        set them: a bnn that reads up to version 5 would train such a run on differently
        normalized images.

The file names of a run folder, the layout checks and the JSON field checks are in
`bnn_keras.training.run_files` (the names are re-exported here), where `RunSummary` reads what
deploying a run's model needs without this module: `convert` reads run folders that way.
"""

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from bnn_keras import files
from bnn_keras.errors import BnnError
from bnn_keras.options import ARGUMENT, FOLDER, KEY_VALUE, NESTED, option
from bnn_keras.training import distribute, recipes
from bnn_keras.training.best_epoch import KEEP_CHOICES
from bnn_keras.training import tricks as tricks_lib
from bnn_keras.training.data.normalization import Normalization
from bnn_keras.training.data.preprocessing import ModelInput, parse_floats
from bnn_keras.training.precision import PRECISIONS, resolve_precision
from bnn_keras.training.run_files import (  # noqa: F401  (the file names: re-exported)
    BACKUP_DIR,
    BEST_MODEL_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    HISTORY_FILE,
    LAST_MODEL_FILE,
    METRICS_FILE,
    MODEL_FILE,
    STATUS_FILE,
    TENSORBOARD_DIR,
    check_layout,
    checked_field,
    parse_normalization,
    parse_shape,
    read_config_json,
    shown,
)

# The layout of a run that uses layout 5's field and none of layout 6's.
_KEEP_FORMAT_VERSION = 5
# TrainConfig fields that layout 6 adds; left out of config.json when None.
_LAYOUT_6_FIELDS = ("normalize_mean", "normalize_std", "normalize_pixel_max")
# The layout of a run that uses layout 4's fields and none of layout 5's.
_DISTILL_FORMAT_VERSION = 4
# The layout of a run from a weights file that uses none of layout 4's fields.
_WEIGHTS_FORMAT_VERSION = 3
# The layout of a run that did not start from a weights file.
_PLAIN_FORMAT_VERSION = 2
# RunRecord fields (and the TrainConfig field `weights`) that layout 3 adds.
_WEIGHTS_FIELDS = ("weights", "weights_sha256", "model_variant")
# TrainConfig and RunRecord fields that layout 4 adds; left out of config.json when unused
# (None, or False for `float_copy` and `distill_cache`).
_LAYOUT_4_FIELDS = ("teacher", "teacher_sha256", "distill_loss", "distill_weight",
                    "distill_temperature", "distill_attention_weight",
                    "distill_attention_layers", "distill_cache", "float_copy",
                    "input_activation")
# The float copy's activation where the BNN had input quantizers, unless `input_activation`
# says otherwise (the papers' full-precision counterparts use ReLU; see `float_equivalent`).
DEFAULT_INPUT_ACTIVATION = "relu"


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run; written to `config.json`.

    Each field carries its help text and choices (`bnn_keras.options.option`); `bnn train`'s
    options are generated from them, so this class is the one place an option is described.
    None means "the recipe's value" (or the data set's) for the recipe-dependent fields.
    """

    model: str = option(
        "binary-densenet28", cli=ARGUMENT,
        help="Registry name of the model (`bnn models` lists them).")
    dataset: str = option(
        "cifar10",
        help="digits (bundled with scikit-learn, offline), mnist, fashion_mnist (IDX files "
             "in --data-dir are read directly), cifar10, cifar100, imagenette, "
             "imagenet2012 (TFDS), or folder:PATH (one sub-folder of images per class).")
    data_dir: Optional[str] = option(
        path=FOLDER,
        help="Where the data set lives or is downloaded to (TFDS data_dir, or a folder of "
             "IDX files for mnist and fashion_mnist) [default: for fashion_mnist, Debian's "
             "/usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist) when "
             "installed, else TFDS's].")
    manual_dir: Optional[str] = option(
        path=FOLDER, help="Where manually downloaded archives are (imagenet2012).")
    normalize_mean: Optional[Union[str, float, List[float]]] = option(
        metavar="M[,M,M]",
        help="Normalize the images with this per-channel mean, on raw pixels (one value, or "
             "one per channel), instead of the training split's; with --normalize-std. For "
             "a teacher trained elsewhere on pixels / 255: --normalize-mean 0 "
             "--normalize-std 255.")
    normalize_std: Optional[Union[str, float, List[float]]] = option(
        metavar="S[,S,S]",
        help="The per-channel standard deviation of that normalization.")
    normalize_pixel_max: Optional[float] = option(
        help="The raw pixel maximum --normalize-mean and --normalize-std are given for (e.g. "
             "255 for 0-255 pixels of digits, whose own maximum is 16) [default: the data "
             "set's].")
    image_size: Optional[int] = option(
        help="Side of the square model input [default: the data set's, 16 for digits].")
    epochs: Optional[int] = option(help="Training epochs [default: the recipe's, else 10].")
    batch_size: Optional[int] = option(
        help="Global batch size, split over workers [default: the recipe's, else 64].")
    learning_rate: Optional[float] = option(
        aliases=("--lr",),
        help="Peak Adam learning rate (of every weight with adam, of the float weights with "
             "bop, of the binary weights with adam-sgd) [default: the recipe's, 1e-3 by "
             "default]. BNNs want a low one: a high rate flips many latent weight signs per "
             "step.")
    float_learning_rate: Optional[float] = option(
        aliases=("--float-lr",),
        help="Peak SGD learning rate of the float weights with --optimizer adam-sgd "
             "[default: the recipe's, 0.1].")
    recipe: str = option(
        "default", choices=("default", "paper"),
        help="paper: the optimizer, schedule, epochs and batch size of the model's paper "
             "(the options here override single values); where the paper trains in stages "
             "(reactnet-a, real-to-binary-net, strong-baseline-net), every stage in order, "
             "as one run.")
    optimizer: Optional[str] = option(
        choices=recipes.OPTIMIZERS,
        help="adam; bop (larq's Bop for binary weights, Adam for the rest); or adam-sgd "
             "(Adam for binary weights, SGD with momentum for the rest, QuickNet's recipe).")
    schedule: Optional[str] = option(
        choices=recipes.SCHEDULES,
        help="Learning-rate decay [default: the recipe's, constant].")
    warmup_epochs: Optional[float] = option(help="Linear learning-rate warm-up.")
    label_smoothing: Optional[float] = option(help="Label smoothing, e.g. 0.1.")
    weight_decay: Optional[float] = option(
        help="L2 on full-precision kernels only (binary latent weights never decay).")
    strategy: str = option(
        "auto", choices=distribute.STRATEGIES,
        help="tf.distribute strategy; multi-worker reads TF_CONFIG (one process per worker, "
             "--batch-size is global).")
    tricks: Dict[str, Any] = option(
        cli=NESTED, nested=tricks_lib.Tricks, default_factory=dict,
        help="Training tricks applied to the model's binary layers "
             "(`bnn_keras.training.tricks.Tricks`, as recorded by `Tricks.recorded`).")
    model_options: Dict[str, Any] = option(
        cli=KEY_VALUE, spelled="--model-option", metavar="KEY=VALUE", default_factory=dict,
        help="Override an option of the model's builder (repeatable; VALUE is JSON, else a "
             "string), e.g. --model-option stage_filters=[16,32,64,128].")
    weights: Optional[str] = option(
        metavar="FILE",
        help="Fine-tune from this weights file: a larq-zoo .h5 (its release file or a zoo "
             "model's save_weights; builds the zoo variant of the model) or a Keras weights or "
             "model file of this model. It must fit the model at this input size and number "
             "of classes; it is checked before the run folder is made, and recorded with its "
             "sha256 (--resume does not need it).")
    float_copy: bool = option(
        False, spelled="--float", show_default=False,
        help="Train the float copy of MODEL (`bnn_keras.training.baselines.float_equivalent`: "
             "the same layers without quantizers, from scratch), e.g. as a teacher for "
             "--teacher.")
    input_activation: Optional[str] = option(
        help="With --float: the Keras activation put where the BNN had input quantizers, or "
             "none [default: relu].")
    teacher: Optional[str] = option(
        metavar="RUN_DIR|MODEL_FILE",
        help="Distil from this classifier: a run folder of `bnn train` (trained on the same "
             "data set, image size and classes) or a Keras model file (.keras, .h5). It is "
             "frozen, checked before the run folder is made and recorded with its sha256; "
             "--resume needs the same file.")
    distill_loss: Optional[str] = option(
        choices=("kl", "distribution"),
        help="With --teacher: kl (Hinton's soft targets mixed with the labels) or "
             "distribution (ReActNet's: the teacher's softmax only) [default: kl].")
    distill_weight: Optional[float] = option(
        help="With --teacher: share of the distillation term in the loss, in (0, 1] "
             "[default: 0.5 for kl, 1 for distribution].")
    distill_temperature: Optional[float] = option(
        help="With --teacher: softmax temperature of the distillation term [default: 4 for "
             "kl, 1 for distribution].")
    distill_attention_weight: Optional[float] = option(
        help="With --teacher: weight of Real-to-Binary's attention matching (the student's "
             "feature maps at --distill-attention-layers learn where the teacher's are "
             "active; larq-zoo's form, added to the loss) [default: 30 with layers, else 0].")
    distill_attention_layers: Optional[str] = option(
        aliases=("--distill-attention-layer",), metavar="NAME[,NAME...]",
        help="With --teacher: the layers, in both student and teacher with the same spatial "
             "size, whose attention is matched, e.g. block_2_out,block_3_out for "
             "real-to-binary-net (`bnn summary MODEL` lists the layers).")
    distill_cache: bool = option(
        False, negatable=True, show_default=False,
        help="With --teacher and --no-augment: compute the teacher's logits on the training "
             "set once, before the first epoch (kept in memory), instead of at every step, so "
             "that a step costs what the student alone costs [default: off].")
    steps_per_epoch: Optional[int] = option(
        help="Limit each epoch to this many batches (quick experiments).")
    validation_freq: int = option(
        1, help="Evaluate on the test split every N epochs (and after the last one).")
    keep: str = option(
        "last", choices=KEEP_CHOICES,
        help="Which epoch model.keras holds: the last, or the best (the first with the "
             "highest test accuracy in training precision, among the validated epochs; "
             "chosen on the test split, so its test accuracy is optimistic). The other is "
             "saved beside it as best.keras or last.keras.")
    seed: int = option(0, help="Seed for weights, shuffling and augmentation.")
    precision: str = option(
        "auto", choices=PRECISIONS,
        help="Keras dtype policy; auto = mixed_bfloat16 where the CPU (AVX512-BF16/AMX) or GPU "
             "runs bf16 natively, else float32 (emulated bf16 is ~7x slower).")
    augment: Optional[bool] = option(
        negatable=True, show_default=False,
        help="Standard augmentation of the data set: random crop and flip (CIFAR, small "
             "color image folders) or random-resized crop and flip (Imagenette, ImageNet, "
             "large image folders); digits, MNIST, Fashion-MNIST and grayscale folders have "
             "none [default: on where there is one].")
    track_flips: bool = option(
        True, negatable=True,
        help="Record the fraction of latent weights whose sign flips, per binary layer and "
             "epoch, into history.csv, flips.csv and flips.png.")
    flip_every_n_steps: Optional[int] = option(
        help="Also record sign flips every N training steps.")
    flip_warn_threshold: Optional[float] = option(
        0.05, zero_means_none=True,
        help="Warn when the flip ratio stays above this late in training (a learning rate "
             "that is too high); 0 disables the warning.")
    tensorboard: bool = option(False, show_default=False,
                               help="Write TensorBoard logs to RUN_DIR/tensorboard.")

    def __post_init__(self):
        # `normalize_mean` and `normalize_std` are kept as lists of floats, however they were
        # given ("0.5,0.4", 0.5, [0.5, 0.4]).
        for name in ("normalize_mean", "normalize_std"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, parse_floats(value, f"`{name}`"))
        # The CLI gives `distill_attention_layers` as one comma-separated string, and config.json
        # records it so (without spaces, so that --resume compares names); a Python caller's
        # list of names becomes that string.
        layers = self.distill_attention_layers
        if isinstance(layers, str):
            layers = layers.split(",")
        if layers is not None:
            self.distill_attention_layers = ",".join(str(name).strip() for name in layers)

    def validate(self) -> None:
        """Raises `BnnError` naming the first option that is out of range.

        The message names the field in backticks (`bnn_keras.options.spell_fields`), so that
        `bnn train` can show its option instead.
        """
        if self.recipe not in ("default", "paper"):
            raise BnnError(f"Expected `recipe` 'default' or 'paper', got {self.recipe!r}.")
        if (self.normalize_mean is None) != (self.normalize_std is None):
            raise BnnError("`normalize_mean` and `normalize_std` describe one normalization: "
                           "give both, or neither (the training split's statistics).")
        if self.normalize_std is not None and min(self.normalize_std) <= 0:
            raise BnnError(f"Expected `normalize_std` above 0, got {self.normalize_std}.")
        if self.normalize_pixel_max is not None and (self.normalize_mean is None
                                                     or self.normalize_pixel_max <= 0):
            raise BnnError("`normalize_pixel_max` is the pixel scale of `normalize_mean` and "
                           "`normalize_std`: give it with them, above 0.")
        # (field, value, lowest allowed, whether the lowest is excluded)
        checks = [
            ("epochs", self.epochs, 1, False),
            ("batch_size", self.batch_size, 1, False),
            ("learning_rate", self.learning_rate, 0, True),
            ("float_learning_rate", self.float_learning_rate, 0, True),
            ("image_size", self.image_size, 4, False),
            ("steps_per_epoch", self.steps_per_epoch, 1, False),
            ("validation_freq", self.validation_freq, 1, False),
            ("warmup_epochs", self.warmup_epochs, 0, False),
            ("label_smoothing", self.label_smoothing, 0, False),
            ("weight_decay", self.weight_decay, 0, False),
            ("flip_every_n_steps", self.flip_every_n_steps, 1, False),
            # 0 would be no attention matching: leave the option out for that.
            ("distill_attention_weight", self.distill_attention_weight, 0, True),
        ]
        for name, value, lowest, exclusive in checks:
            if value is None:
                continue
            if value < lowest or (exclusive and value == lowest):
                bound = f"> {lowest}" if exclusive else f">= {lowest}"
                raise BnnError(f"Expected `{name}` {bound}, got {value!r}.")
        if self.label_smoothing is not None and self.label_smoothing >= 1:
            raise BnnError(f"Expected `label_smoothing` < 1, got {self.label_smoothing!r}.")
        if self.teacher is None:
            for name in ("distill_loss", "distill_weight", "distill_temperature",
                         "distill_attention_weight", "distill_attention_layers",
                         "distill_cache"):
                if getattr(self, name) not in (None, False):
                    raise BnnError(f"`{name}` applies to distillation; give a `teacher` too, "
                                   f"or drop `{name}`.")
        else:
            settings = self.distill_settings()  # a loss, weight, temperature ... out of range
            if self.distill_cache and settings.attention_weight > 0:
                raise BnnError("Attention matching needs the teacher's feature maps at every "
                               "step; drop `distill_cache` or the attention matching.")
            if self.distill_cache and self.augment:
                raise BnnError("`distill_cache` computes the teacher's logits once, on the "
                               "un-augmented images; train without `augment`, or drop "
                               "`distill_cache`.")
        if self.float_copy and self.weights is not None:
            raise BnnError("`weights` loads into the binary model, and `float_copy` trains a "
                           "freshly initialised float copy of it; drop one of them.")
        if self.input_activation is not None:
            if not self.float_copy:
                raise BnnError("`input_activation` applies to the float copy; give "
                               "`float_copy` too, or drop `input_activation`.")
            self.float_input_activation()
        resolve_precision(self.precision)

    def distill_settings(self):
        """The `DistillSettings` of `distill_loss`, `distill_weight`, `distill_temperature`,
        `distill_attention_weight` and `distill_attention_layers` (a comma-separated list) (their
        defaults where None); None without a `teacher`.

        Raises:
            BnnError: a value out of range (naming the field).
        """
        if self.teacher is None:
            return None
        from bnn_keras.distillation import DistillSettings

        layers = self.distill_attention_layers
        layers = () if layers is None else [name.strip() for name in layers.split(",")]
        return DistillSettings.for_loss(
            self.distill_loss or "kl", weight=self.distill_weight,
            temperature=self.distill_temperature, attention_weight=self.distill_attention_weight,
            attention_layers=layers)

    def float_input_activation(self) -> Optional[str]:
        """The float copy's input activation: a Keras activation name, or None for none.

        Raises:
            BnnError: a name Keras does not know.
        """
        name = self.input_activation or DEFAULT_INPUT_ACTIVATION
        if name.lower() == "none":
            return None
        import tensorflow as tf

        try:
            tf.keras.activations.get(name)
        except ValueError:
            raise BnnError(f"Unknown `input_activation` {name!r}; give a Keras activation name "
                           "(relu, tanh, ...) or none.") from None
        return name


def merged_recipe(base: recipes.Recipe, config: TrainConfig) -> recipes.Recipe:
    """`base` (a paper's recipe, or bnn's default) with the values the user gave in `config`
    over it, and its epochs and batch size resolved: the user's, else the recipe's, else 10 and
    64. `resolve_recipe` and each stage of a staged recipe merge this way.

    Raises:
        BnnError: a linear or cosine schedule whose warm-up is as long as the run (it warms up
            first), naming both fields (`bnn train` shows its options) and where each value
            came from.
    """
    recipe = base.replace(**{key: getattr(config, key) for key in RECIPE_OVERRIDES
                             if getattr(config, key) is not None})
    epochs = config.epochs or recipe.epochs or 10
    _check_warmup(recipe, epochs, config)  # (`recipe.epochs` is still the recipe's own)
    return recipe.replace(epochs=epochs, batch_size=config.batch_size or recipe.batch_size or 64)


def _check_warmup(recipe: recipes.Recipe, epochs: int, config: TrainConfig) -> None:
    if recipe.schedule not in ("linear", "cosine") or recipe.warmup_epochs < epochs:
        return
    from_recipe = f"the recipe's, {recipe.source or 'bnn default'}"
    warmup_origin = "given" if config.warmup_epochs is not None else from_recipe
    epochs_origin = ("given" if config.epochs is not None else
                     from_recipe if recipe.epochs is not None else "bnn's default")
    raise BnnError(
        f"`warmup_epochs` {recipe.warmup_epochs:g} ({warmup_origin}) must be below `epochs` "
        f"{epochs} ({epochs_origin}): a {recipe.schedule} schedule warms up first; give "
        f"`epochs` above {recipe.warmup_epochs:g} or `warmup_epochs` below {epochs}.")


# TrainConfig fields that override single values of the recipe (a paper's, a stage's, bnn's
# default) when set.
RECIPE_OVERRIDES = ("learning_rate", "float_learning_rate", "optimizer", "schedule",
                     "warmup_epochs", "label_smoothing", "weight_decay")


def resolve_recipe(config: TrainConfig) -> Tuple[TrainConfig, recipes.Recipe]:
    """The recipe a run uses and the config with every recipe-dependent value filled in.

    Raises:
        BnnError: `recipe="paper"` for a model without a published recipe, or a bad value.
    """
    config.validate()
    if config.recipe == "paper":
        base = recipes.paper_recipe(config.model, optimizer=config.optimizer or "adam")
    else:
        base = recipes.default_recipe()
    recipe = merged_recipe(base, config)
    resolved = dataclasses.replace(
        config, epochs=recipe.epochs, batch_size=recipe.batch_size,
        **{key: getattr(recipe, key) for key in RECIPE_OVERRIDES},
    )
    distill = config.distill_settings()
    if distill is not None:
        resolved = dataclasses.replace(resolved, distill_loss=distill.loss,
                                       distill_weight=distill.weight,
                                       distill_temperature=distill.temperature)
        if distill.attention_layers:
            resolved = dataclasses.replace(
                resolved, distill_attention_weight=distill.attention_weight,
                distill_attention_layers=",".join(distill.attention_layers))
    if config.float_copy and config.input_activation is None:
        resolved = dataclasses.replace(resolved, input_activation=DEFAULT_INPUT_ACTIVATION)
    return resolved, recipe


@dataclasses.dataclass(frozen=True)
class EpochsChange:
    """A resume that changed a run's total epochs (recorded as {"from", "to", "after_epoch"}).

    Attributes:
        old: The total before (None when the record did not say).
        new: The total after.
        after_epoch: Complete epochs when it changed.
    """

    old: Optional[int]
    new: int
    after_epoch: int

    def to_dict(self) -> Dict[str, Optional[int]]:
        return {"from": self.old, "to": self.new, "after_epoch": self.after_epoch}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "EpochsChange":
        if set(values) != {"from", "to", "after_epoch"}:
            raise ValueError("an object with from, to and after_epoch")
        return cls(old=values["from"], new=values["to"], after_epoch=values["after_epoch"])


@dataclasses.dataclass
class RunRecord:
    """A run folder's config.json: the run's options and what it resolved and measured.

    Read it with `RunRecord.read(run_dir)` and write it with `write(run_dir)`; `to_dict` is
    the file's content. The options are the flat `TrainConfig` keys of the file (a missing
    one takes its default, as bnn has always read them).

    Attributes:
        config: The run's options, recipe-dependent values resolved.
        input_shape: The model input (height, width, channels).
        num_classes: Model outputs.
        class_names: One name per output.
        normalization: Per-channel mean and standard deviation on raw pixels.
        pixel_max: The raw pixel maximum (16 for digits, 255 otherwise); None if not recorded.
        recipe_resolved: The recipe the run trained with.
        precision_resolved: "float32" or "mixed_bfloat16" (what `precision="auto"` became).
        augment_resolved: Whether the training images were augmented.
        num_train: Training examples.
        num_test: Test examples.
        params: Model parameters.
        workers: tf.distribute workers.
        versions: Library versions the run trained with.
        weights_sha256: The sha256 of `config.weights`, the file the run started from.
        model_variant: The variant the registry built the model as when it started from a
            weights file (e.g. "larq-zoo", chosen by a larq-zoo file); a resume builds the
            same one. None for models without variants.
        teacher_sha256: The sha256 of the teacher's model file (`config.teacher`, or its
            model.keras when it is a run folder); a resume refuses another file.
        epochs_changes: Resumes that changed the total epochs, oldest first.
        extra: Keys this version does not know, kept as they were and written back.
        format_version: The layout of the file this record was read from (1: bnn 0.1/0.2);
            `write` writes 4 for a distilled or float-copy run, 3 for another run
            from a weights file and 2 for any other.
    """

    config: TrainConfig
    input_shape: Tuple[int, int, int]
    num_classes: int
    class_names: List[str]
    normalization: Normalization
    pixel_max: Optional[float] = None
    recipe_resolved: Optional[recipes.Recipe] = None
    precision_resolved: Optional[str] = None
    augment_resolved: Optional[bool] = None
    num_train: Optional[int] = None
    num_test: Optional[int] = None
    params: Optional[int] = None
    workers: Optional[int] = None
    versions: Optional[Dict[str, str]] = None
    weights_sha256: Optional[str] = None
    model_variant: Optional[str] = None
    teacher_sha256: Optional[str] = None
    epochs_changes: List[EpochsChange] = dataclasses.field(default_factory=list)
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def read(cls, run_dir: Union[str, os.PathLike]) -> "RunRecord":
        """The config.json of `run_dir`, validated.

        Raises:
            BnnError: one line naming the file and what is wrong with it: missing, not JSON,
                a newer layout, a missing field or a field of the wrong type.
        """
        path, values = read_config_json(run_dir)
        record = cls.from_dict(values, source=str(path))
        record._stamp = _stamp(path)
        return record

    @classmethod
    def from_dict(cls, values: Any, *, source: str = CONFIG_FILE) -> "RunRecord":
        """A record from config.json's content (`source` names the file in messages).

        Raises:
            BnnError: as `read`.
        """
        version = check_layout(values, source)

        options = _checked_options(values, source)
        facts: Dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in values and field.name not in _NOT_IN_FILE:
                facts[field.name] = checked_field(source, field.name, values[field.name],
                                           _JSON_TYPES.get(field.name, field.type),
                                           _PARSERS.get(field.name))
        known = {"format_version", *options, *facts}
        extra = {k: v for k, v in values.items() if k not in known}
        if (options.get("weights") is None) != (facts.get("weights_sha256") is None):
            given, missing = (("weights", "weights_sha256") if options.get("weights")
                              else ("weights_sha256", "weights"))
            raise BnnError(f"{source}: field {given!r} without {missing!r}; a run from a "
                           "weights file records both.")
        if (options.get("teacher") is None) != (facts.get("teacher_sha256") is None):
            given, missing = (("teacher", "teacher_sha256") if options.get("teacher")
                              else ("teacher_sha256", "teacher"))
            raise BnnError(f"{source}: field {given!r} without {missing!r}; a distilled run "
                           "records both.")
        return cls(config=TrainConfig(**options), extra=extra, format_version=version, **facts)

    @property
    def model_input(self) -> ModelInput:
        """What a deployed model of this run needs to be fed and read (`ModelInput`): the data
        set, input shape, classes, normalization and raw pixel maximum."""
        return ModelInput.from_record(self)

    def to_dict(self) -> Dict[str, Any]:
        """config.json's content: the options, then what the run recorded (unrecorded facts,
        and an empty `epochs_changes`, are left out as bnn 0.1/0.2 left them out; so is
        `weights` when the run did not start from a file)."""
        values = {**self.extra, **dataclasses.asdict(self.config)}
        if values.get("weights") is None:
            values.pop("weights", None)
        for name in _LAYOUT_4_FIELDS:
            if values.get(name) in (None, False):
                values.pop(name, None)
        for field in dataclasses.fields(self):
            if field.name in _NOT_IN_FILE:
                continue
            value = getattr(self, field.name)
            if value is None or (field.name == "epochs_changes" and not value):
                continue
            values[field.name] = _FORMATTERS.get(field.name, _plain)(value)
        from_file = any(values.get(name) is not None for name in _WEIGHTS_FIELDS)
        if values.get("keep", "last") == "last":
            values.pop("keep", None)
        for name in _LAYOUT_6_FIELDS:
            if values.get(name) is None:
                values.pop(name, None)
        if any(name in values for name in _LAYOUT_6_FIELDS):
            values["format_version"] = FORMAT_VERSION
        elif "keep" in values:
            values["format_version"] = _KEEP_FORMAT_VERSION
        elif any(values.get(name) not in (None, False) for name in _LAYOUT_4_FIELDS):
            values["format_version"] = _DISTILL_FORMAT_VERSION
        else:
            values["format_version"] = (_WEIGHTS_FORMAT_VERSION if from_file
                                        else _PLAIN_FORMAT_VERSION)
        return values

    def write(self, run_dir: Union[str, os.PathLike]) -> Path:
        """Writes config.json into `run_dir` atomically; returns its path."""
        path = files.write_json(Path(run_dir) / CONFIG_FILE, self.to_dict())
        self._stamp = _stamp(path)
        return path

    def with_epochs(self, epochs: int, recipe: recipes.Recipe, after_epoch: int) -> "RunRecord":
        """The record of the run extended (or shortened) to `epochs` after `after_epoch`
        complete epochs: its schedule now spans the new total."""
        return dataclasses.replace(
            self, config=dataclasses.replace(self.config, epochs=epochs), recipe_resolved=recipe,
            epochs_changes=[*self.epochs_changes,
                            EpochsChange(old=self.config.epochs, new=epochs,
                                         after_epoch=after_epoch)],
        )

    def check_unchanged(self, run_dir: Union[str, os.PathLike]) -> None:
        """Refuses to go on when config.json changed since this record was read or written
        (another process extended the run meanwhile): decisions made on it would be stale.

        Raises:
            BnnError: the file's size, modification time or inode differ.
        """
        stamp = getattr(self, "_stamp", None)
        path = Path(run_dir) / CONFIG_FILE
        if stamp is not None and _stamp(path) != stamp:
            raise BnnError(f"{path} changed while this command was starting (did another "
                           "process resume the run?); run the command again.")


def config_from_dict(values: Any, *, source: str) -> TrainConfig:
    """A `TrainConfig` from recorded options (a JSON object of its fields, as config.json and
    stages.json hold them), each field's type checked.

    Raises:
        BnnError: not an object, an unknown field, or a field of the wrong type (naming it and
            `source`).
    """
    if not isinstance(values, dict):
        raise BnnError(f"{source}: expected an object of training options, got {shown(values)}.")
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise BnnError(f"{source}: unknown training option {unknown[0]!r}.")
    return TrainConfig(**_checked_options(values, source))


def _checked_options(values: Dict[str, Any], source: str) -> Dict[str, Any]:
    """The `TrainConfig` fields among `values`, each checked against its type."""
    options = {}
    for field in dataclasses.fields(TrainConfig):
        if field.name in values:
            options[field.name] = checked_field(source, field.name, values[field.name], field.type)
    checked_field(source, "tricks", options.get("tricks", {}), Dict[str, Any], _tricks)
    return options


def read_run_config(run_dir: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Deprecated since bnn 0.3 (kept for one release): `RunRecord.read(run_dir).to_dict()`."""
    warnings.warn("read_run_config is deprecated; use RunRecord.read(run_dir)",
                  DeprecationWarning, stacklevel=2)
    return RunRecord.read(run_dir).to_dict()


# RunRecord attributes that are not keys of the file.
_NOT_IN_FILE = ("config", "extra", "format_version")


def _sha256(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError("64 lowercase hexadecimal digits (a sha256)")
    return value


def _epochs_changes(values: List[Dict[str, Optional[int]]]) -> List[EpochsChange]:
    return [EpochsChange.from_dict(item) for item in values]


def _tricks(values: Dict[str, Any]) -> tricks_lib.Tricks:
    try:
        return tricks_lib.Tricks.from_recorded(values)
    except TypeError:
        names = ", ".join(tricks_lib.TRICKS)
        raise ValueError(f"an object with some of {names}") from None


def _recipe(values: Optional[Dict[str, Any]]) -> Optional[recipes.Recipe]:
    if values is None:
        return None
    try:
        return recipes.Recipe.from_dict(values)
    except BnnError as exc:
        raise ValueError(f"a recipe ({exc})") from None


# How a field looks in the file when that differs from its type in RunRecord, how it is read
# (a parser raises ValueError saying what it expected), and how it is written.
_JSON_TYPES: Dict[str, Any] = {
    "input_shape": List[int],
    "normalization": Dict[str, List[float]],
    "recipe_resolved": Optional[Dict[str, Any]],
    "epochs_changes": List[Dict[str, Optional[int]]],
}
_PARSERS: Dict[str, Callable[[Any], Any]] = {
    "input_shape": parse_shape,
    "normalization": parse_normalization,
    "recipe_resolved": _recipe,
    "epochs_changes": _epochs_changes,
    "weights_sha256": _sha256,
    "teacher_sha256": _sha256,
}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


_FORMATTERS: Dict[str, Callable[[Any], Any]] = {
    "normalization": lambda n: n.to_dict(),
    "recipe_resolved": dataclasses.asdict,
    "epochs_changes": lambda changes: [change.to_dict() for change in changes],
}


def _stamp(path: Path) -> Optional[Tuple[int, int, int]]:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns, info.st_ino
