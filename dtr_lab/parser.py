"""The CLI's argument parser: `--config` files checked before parsing, every parse error one line.

jsonargparse prints the full usage (80+ lines) and a multi-line message for a bad option, and reads
a config file as a bare string, so its YAML errors say `<unicode string>` and an empty file says
only `Unexpected config:`. Here the files are read first, naming file and line, and the parser's
remaining errors are folded into one `dtr_lab: error:` line that names the key and where its value
came from: the command line, the config file that sets it, or the default. `--help` and
`--print_config` are untouched.
"""

from __future__ import annotations

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
    parts = re.findall(r"""(?:key|option) ["']([\w.]+)["']""", text)  # outer to inner: model.routing, beta
    if not parts:
        return f"{text}; fix it in the config or on the command line (`--help` lists the options)"
    key = bare(".".join(parts))
    where = origin(key, args, configs)
    if where is None:
        return f"{text} ({key}: its default); set it in the config or on the command line"
    return f"{text} ({key}, {where}); fix it there (`--help` lists the options)"


class OneLineParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one `dtr_lab: error:` line and exit status 2."""

    configs: dict[Path, dict] = {}  # the --config files, read before parsing (see read_configs)
    args: list[str] = []  # the command line, to say which option or file set a bad value

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse asked for an exception (it may try alternatives)
            super().error(message, ex)
        self.exit(2, f"dtr_lab: error: {one_line(message, OneLineParser.args, OneLineParser.configs)}\n")


def read_configs(args: list[str]) -> None:
    """Read every --config file first (one line naming file and line if one is bad)."""
    OneLineParser.configs = {p: read_config_file(p) for p in config_files(args)}
    OneLineParser.args = args
