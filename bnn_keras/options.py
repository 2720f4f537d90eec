"""Dataclass fields that carry their own help and choices: one source for a config and its CLI.

A config dataclass (`bnn_keras.training.TrainConfig`, `bnn_keras.training.tricks.Tricks`) declares each
option once, with `option(...)`: its default, a help text, its choices and command-line
spelling. The `bnn` command builds its options from these fields, so the CLI, the config and
config.json cannot drift apart.

Library messages name a field (or a function's parameter) the way a Python caller spells it,
in backticks: "Expected `learning_rate` > 0, got 0.0." A front end swaps in its own spelling
with `spell_fields`; `bnn` shows the option ("Expected --learning-rate > 0, got 0.0.").
"""

import dataclasses
import re
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

# How a field appears on the command line (field metadata "cli"):
OPTION = "option"          # --name VALUE (or a flag for a bool)
ARGUMENT = "argument"      # a positional argument (the model name)
KEY_VALUE = "key_value"    # repeatable --name KEY=VALUE, collected into a dict
NESTED = "nested"          # a dict field whose options come from another dataclass

# What a path option's value may name (field metadata "path"):
FOLDER = "folder"                # a folder, existing or not (a file there is refused)
EXISTING_FILE = "existing_file"  # a file that exists
ANY_PATH = "any"                 # a file or folder, existing or not


def option(
    default: Any = None,
    *,
    help: str,
    choices: Optional[Sequence[str]] = None,
    aliases: Tuple[str, ...] = (),
    negatable: bool = False,
    zero_means_none: bool = False,
    show_default: bool = True,
    cli: str = OPTION,
    nested: Optional[type] = None,
    metavar: Optional[str] = None,
    spelled: Optional[str] = None,
    path: Optional[str] = None,
    default_factory: Optional[Callable[[], Any]] = None,
) -> Any:
    """A dataclass field with what its command-line option needs.

    Args:
        default: The field's default (the option's too).
        help: The option's help text (also the field's documentation).
        choices: Allowed values, when the field takes one of a few names.
        aliases: Extra spellings of the option, e.g. `("--lr",)`.
        negatable: A bool (or None) field gets `--name/--no-name`.
        zero_means_none: On the command line, 0 turns the feature off (the field's None).
        show_default: Show the default in the help (off where the help says it in words).
        cli: How the field appears: `OPTION`, `ARGUMENT`, `KEY_VALUE` or `NESTED`.
        nested: For `NESTED`, the dataclass whose fields are the options.
        metavar: The option's value placeholder in the help.
        spelled: The option's spelling when it is not `flag(name)` (e.g. "--model-option").
        path: The value is a path: `FOLDER` (a file there is refused), `EXISTING_FILE` (a
            file that must exist) or `ANY_PATH`.
        default_factory: For a mutable default (dict, list).
    """
    metadata = dict(help=help, choices=tuple(choices) if choices else None, aliases=aliases,
                    negatable=negatable, zero_means_none=zero_means_none,
                    show_default=show_default, cli=cli, nested=nested, metavar=metavar,
                    spelled=spelled, path=path)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag(field: "dataclasses.Field") -> str:
    """The command-line spelling of a field: `batch_size` -> `--batch-size`."""
    return field.metadata.get("spelled") or "--" + field.name.replace("_", "-")


def flags(config_type: type) -> dict:
    """{field name: its command-line spelling} for a config dataclass, nested ones included."""
    result = {}
    for field in dataclasses.fields(config_type):
        if field.metadata.get("cli") == NESTED:
            result.update(flags(field.metadata["nested"]))
        elif field.metadata.get("cli") == ARGUMENT:
            result[field.name] = field.name.upper()
        else:
            result[field.name] = flag(field)
    return result


# A field named in a library message: a Python identifier in backticks.
_FIELD_MENTION = re.compile(r"`([a-z][a-z0-9_]*)`")


def spell_fields(message: str, spellings: Mapping[str, str]) -> str:
    """`message` with each field it names in backticks spelled as `spellings` says.

    Args:
        message: A library message, e.g. "Expected `batch_size` >= 1, got 0."
        spellings: {field name: how the reader knows it}, e.g. `{"batch_size": "--batch-size"}`
            (`flags` gives a config dataclass's command-line spellings). Names not in it, and
            backticked text that is not a name (`bnn train --resume RUN`), are left as they are.

    Returns:
        E.g. "Expected --batch-size >= 1, got 0."
    """
    return _FIELD_MENTION.sub(lambda m: spellings.get(m.group(1), m.group(0)), message)
