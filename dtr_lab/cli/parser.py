"""The CLI's argument parser: `--config` files checked before parsing, every parse error one line.

jsonargparse prints the full usage (80+ lines) and a multi-line message for a bad option, and reads
a config file as a bare string, so its YAML errors say `<unicode string>` and an empty file says
only `Unexpected config:`. Here the files are read first, naming file and line, and the parser's
remaining errors are folded into one `dtr_lab: error:` line that names the key and where its value
came from: the command line, the config file that sets it, or the default. A mistyped option gets the
closest existing one ("did you mean"; jsonargparse offers none before Python 3.14), and an abbreviated
option (`--trainer.max_step`) is refused rather than expanded. `--help` and `--print_config` are
untouched.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from pathlib import Path
from typing import NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from dtr_lab.errors import DTRLabError

CONFIG_FLAGS = ("--config", "-c")
# lines of jsonargparse's messages that list what it tried rather than what is wrong
NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "Expected a NoneType",
)


def config_value(args: list[str], i: int) -> str | None:
    """The value of a --config / -c at args[i], or None when args[i] is none."""
    if args[i] in CONFIG_FLAGS and i + 1 < len(args):
        return args[i + 1]
    return args[i].removeprefix("--config=") if args[i].startswith("--config=") else None


def is_config_file(value: str) -> bool:
    """A --config value that names a file (inline YAML strings are left to the parser)."""
    return value.endswith((".yaml", ".yml")) or Path(value).exists()


def config_files(args: list[str]) -> list[Path]:
    """The paths given to --config / -c, in order."""
    values = (config_value(args, i) for i in range(len(args)))
    return [Path(v) for v in values if v is not None and is_config_file(v)]


def read_config_file(path: Path) -> dict:
    """One config file as a mapping; DTRLabError naming the file (and line) when it is not one."""
    if not path.exists():
        raise DTRLabError(f"config file {path} does not exist; check the path given to --config")
    if path.is_dir():
        raise DTRLabError(f"config {path} is a folder; pass a YAML file to --config")
    try:
        with path.open(encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        context = f" ({err.context})" if err.context else ""
        raise DTRLabError(
            f"{path}, line {mark.line + 1}, column {mark.column + 1}: invalid YAML, {err.problem}{context}; "
            "fix the syntax there"
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        raise DTRLabError(f"{path}: cannot be read as YAML ({err}); fix the file") from None
    if config is None:
        raise DTRLabError(
            f"config file {path} is empty; put the options to change in it (e.g. `trainer:` / `model:`) "
            "or drop that --config"
        )
    if not isinstance(config, dict):
        raise DTRLabError(
            f"{path} holds a YAML {type(config).__name__}, not a mapping of options; "
            "write it as `model:` / `data:` / `trainer:` sections"
        )
    return config


def bare(key: str) -> str:
    """A dotted key without its `init_args` parts, as jsonargparse names it in errors."""
    return ".".join(part for part in key.split(".") if part != "init_args")


def keys_set(config: dict, prefix: str = "") -> set[str]:
    """Every dotted key a config mapping sets, bare."""
    keys = set()
    for name, value in config.items():
        key = bare(f"{prefix}{name}")
        keys.add(key)
        if isinstance(value, dict):
            keys |= keys_set(value, f"{key}.")
    return keys


def origin(key: str, args: list[str], configs: dict[Path, dict]) -> str | None:
    """Where the value of a bare dotted key came from: the last --config file or command-line option that
    sets it (a later one wins, as in the parser); None for the default."""
    found = None
    for i, arg in enumerate(args):
        value = config_value(args, i)
        if value is not None:
            if Path(value) in configs and key in keys_set(configs[Path(value)]):
                found = f"set in {value}"
        elif arg.startswith("--") and bare(arg[2:].split("=")[0]) == key:
            found = f"set on the command line by {arg.split('=')[0]}"
    return found


def one_line(message: str, args: list[str], configs: dict[Path, dict]) -> str:
    """A jsonargparse message folded into one line, naming the key and where its value was set."""
    folded: list[str] = []
    for line in message.splitlines():
        line = re.sub(r"<class '([\w.]+)'>", r"\1", line.strip())
        if not line or line.removeprefix("- ").startswith(NOISE):
            continue
        if line.startswith("- Expected") and folded and folded[-1].startswith("- Expected"):
            folded[-1] += f", or {line.removeprefix('- ').lower()}"  # the alternatives of a Union
        else:
            folded.append(line)
    text = " ".join(line.removeprefix("- ") for line in folded)
    parts = re.findall(r"""(?:key|[Oo]ption) ["']([\w.]+)["']""", text)  # outer to inner: model.routing, beta
    if not parts:
        return f"{text}; fix it in the config or on the command line (`--help` lists the options)"
    key = bare(".".join(parts))
    where = origin(key, args, configs)
    if where is None:
        return f"{text} ({key}: its default); set it in the config or on the command line"
    return f"{text} ({key}, {where}); fix it there (`--help` lists the options)"


def closest(name: str, known: list[str]) -> str | None:
    """The known name a mistyped one most likely meant, or None when none is close."""
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return match[0] if match else None


def option_suggestion(option: str, known: list[str]) -> str | None:
    """The option meant by a mistyped `--a.b.c`: the closest known option, else the closest known option
    for its longest prefix with the rest kept (`--model.routin.init_args.alpha` -> `--model.routing...`)."""
    name = option.split("=", 1)[0]
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        found = closest(".".join(parts[:end]), known)
        if found is not None:
            return ".".join([found, *parts[end:]])
    return None


def parameter_suggestion(message: str) -> str | None:
    """For "class_path 'pkg.Class': Option 'x' is not accepted", the closest parameter of that class."""
    found = re.search(r"class_path '([\w.]+)'.*?Option '(\w+)' is not accepted", message, re.S)
    if not found:
        return None
    module, _, name = found.group(1).rpartition(".")
    try:
        params = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    return closest(found.group(2), params)


class OneLineParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one `dtr_lab: error:` line and exit status 2, with a "did
    you mean" for a mistyped option, and no abbreviated options."""

    configs: dict[Path, dict] = {}  # the --config files, read before parsing (see read_configs)
    args: list[str] = []  # the command line, to say which option or file set a bad value

    def __init__(self, *args, **kwargs) -> None:
        # argparse expands a prefix of one option to it: `--trainer.max_step 4` would silently set max_steps
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse asked for an exception (it may try alternatives)
            super().error(message, ex)
        line = one_line(message, OneLineParser.args, OneLineParser.configs)
        meant = self.meant(message)
        if meant:  # one_line's last clause is its generic "fix it …": the suggestion is the better fix
            line = f"{line.rsplit('; ', 1)[0]}; did you mean {meant}? (`--help` lists the options)"
        self.exit(2, f"dtr_lab: error: {line}\n")

    def meant(self, message: str) -> str | None:
        """The option or class parameter that a mistyped one in message most likely meant, or None."""
        unknown = re.match(r"unrecognized arguments: (--\S+)", message)
        meant = option_suggestion(unknown.group(1), self.option_names()) if unknown else None
        in_file = re.search(r"does not accept option '([\w.]+)'", message)  # a key of a config file
        if in_file and not meant:
            meant = (option_suggestion(f"--{in_file.group(1)}", self.option_names()) or "").removeprefix("--")
        return meant or parameter_suggestion(message)

    def option_names(self) -> list[str]:
        """Every long option of this parser and of its subcommands' parsers."""
        parsers = [self]
        if self._subcommands_action is not None:
            parsers += list(self._subcommands_action._name_parser_map.values())
        return sorted({o for p in parsers for o in p._option_string_actions if o.startswith("--")})


def read_configs(args: list[str]) -> None:
    """Read every --config file first (one line naming file and line if one is bad)."""
    OneLineParser.configs = {p: read_config_file(p) for p in config_files(args)}
    OneLineParser.args = args
