"""The CLI's argument parser: `--config` files checked before parsing, every parse error one line.

jsonargparse prints the full usage (80+ lines) and a multi-line message for a bad option, and reads
a config file as a bare string, so its YAML errors say `<unicode string>` and an empty file says
only `Unexpected config:`. Here the files are read first, naming file and line, and the parser's
remaining errors are folded into one `dtr_lab: error:` line that names the key, and the file that
sets it when one does. `--help` and `--print_config` are untouched.
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
    "Expected a <class 'NoneType'>",
)


def config_files(args: list[str]) -> list[Path]:
    """The paths given to --config / -c, in order (inline YAML strings are left to the parser)."""
    values = []
    for i, arg in enumerate(args):
        if arg in CONFIG_FLAGS and i + 1 < len(args):
            values.append(args[i + 1])
        elif arg.startswith("--config="):
            values.append(arg.removeprefix("--config="))
    return [Path(v) for v in values if v.endswith((".yaml", ".yml")) or Path(v).exists()]


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


def setting_file(key: str, configs: dict[Path, dict]) -> Path | None:
    """The last config file that sets the dotted key (the one that wins), or None."""
    found = None
    for path, config in configs.items():
        node = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            found = path
    return found


def one_line(message: str, configs: dict[Path, dict]) -> str:
    """A jsonargparse message folded into one line, naming the config file that sets the bad key."""
    lines = [line.strip().removeprefix("- ") for line in message.splitlines() if line.strip()]
    text = " ".join(line for line in lines if not line.startswith(NOISE))
    key = re.search(r"""(?:key|option) ["']([\w.]+)["']""", text)
    origin = setting_file(key.group(1), configs) if key else None
    where = f" (set in {origin})" if origin else ""
    return f"{text}{where}; fix it in the config or on the command line (`--help` lists the options)"


class OneLineParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one `dtr_lab: error:` line and exit status 2."""

    configs: dict[Path, dict] = {}  # the --config files, read before parsing (see read_configs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse asked for an exception (it may try alternatives)
            super().error(message, ex)
        self.exit(2, f"dtr_lab: error: {one_line(message, OneLineParser.configs)}\n")


def read_configs(args: list[str]) -> None:
    """Read every --config file first (one line naming file and line if one is bad)."""
    OneLineParser.configs = {p: read_config_file(p) for p in config_files(args)}
