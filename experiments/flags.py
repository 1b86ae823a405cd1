"""absl flags shared by the experiment scripts: every `ferjax.configs.Config` field is a flag."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys

from absl import flags

from ferjax import data
from ferjax.configs import INT_TUPLE, STR_TUPLE, Config, base_type


@functools.cache
def _field_comments() -> dict[str, str]:
    """Each Config field's trailing comment, else the comment lines right above it (a field whose meaning
    takes more than a line), read once from the source (parsing it per flag is slow)."""
    comments, above = {}, []
    for line in inspect.getsource(Config).splitlines():
        line = line.strip()
        if line.startswith("#"):
            above.append(line.lstrip("# "))
            continue
        name, colon, rest = line.partition(":")
        if colon and name.isidentifier() and ("#" in rest or above):
            comments[name] = rest.split("#", 1)[1].strip() if "#" in rest else " ".join(above)
        above = []
    return comments


def _field_help(name: str) -> str:
    return _field_comments().get(name, name)


def define_data_dir_flag() -> None:
    flags.DEFINE_string("data_dir", None, f"FER2013 folder or CSV (default: ${data.DATA_DIR_ENV}, else "
                                          f"{data.DEFAULT_DATA_DIR})")


def default_output(model_path: str, name: str) -> str:
    """Where a script writes `name` about a model when --output is not given: inside a workdir or
    checkpoint folder; for an exported model (two files, perhaps inside the installed package), in the
    working directory under the model's name."""
    if os.path.isdir(model_path):
        return os.path.join(model_path, name)
    return f"{os.path.basename(model_path)}_{name}"


def define_config_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines --<field> for every Config field, with the field's default and comment as help."""
    for field in dataclasses.fields(Config):
        help_text = _field_help(field.name)
        kind = base_type(field)
        if kind in (INT_TUPLE, STR_TUPLE):
            flags.DEFINE_list(field.name, None, help_text, flag_values=flag_values)
        elif kind == "bool":
            flags.DEFINE_bool(field.name, field.default, help_text, flag_values=flag_values)
        elif kind == "int":
            flags.DEFINE_integer(field.name, field.default, help_text, flag_values=flag_values)
        elif kind == "float":
            flags.DEFINE_float(field.name, field.default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(field.name, field.default, help_text, flag_values=flag_values)


def config_from_flags(flag_values=flags.FLAGS) -> Config:
    """A Config from the parsed flags (validated by the caller)."""
    values = {}
    for field in dataclasses.fields(Config):
        value = flag_values[field.name].value
        if base_type(field) == INT_TUPLE and value is not None:
            try:
                value = tuple(int(v) for v in value)
            except ValueError:
                raise flags.ValidationError(f"--{field.name}={','.join(value)}: expected integers") from None
        elif base_type(field) == STR_TUPLE and value is not None:
            value = tuple(value)
        values[field.name] = value
    return Config(**values)


def quiet_libraries() -> None:
    """Keeps the console to ferjax's progress: JAX and libraries logging through absl (orbax) only warn.

    Call before anything starts JAX's backends (their start-up notes are logged at INFO).
    """
    import logging

    for name in ("absl", "jax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ferjax").setLevel(logging.INFO)


def _refuse_repeated_lists(args: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """absl keeps a list flag's last value only, so --distill_from=a --distill_from=b would drop a teacher without
    a word: a list flag given twice on the command line is an error. (A flagfile's value may still be replaced
    there once.)"""
    counts = {}
    for arg in args:
        name = arg.lstrip("-").split("=", 1)[0]
        if arg.startswith("-") and name in flag_values and isinstance(flag_values[name].parser, flags.ListParser):
            counts[name] = counts.get(name, 0) + 1
    for name, count in counts.items():
        if count > 1:
            sys.exit(f"error: --{name} given {count} times, and only the last would count; pass the values as one "
                     f"comma-separated list: --{name}=a,b")


def start(argv) -> None:
    """What every script's main does first: refuse stray arguments (in one line, not absl's page of usage),
    quiet the libraries, and keep freed host memory for reuse (before JAX's backend starts: see
    ferjax.host_memory)."""
    from ferjax import host_memory

    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])} (flags take the form --name=value; --help "
                 "lists them)")
    _refuse_repeated_lists(sys.argv[1:])
    quiet_libraries()
    host_memory.keep_freed_memory()
