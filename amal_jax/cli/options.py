"""Options from a TOML file under the command line's, and the resolved ``config.toml``.

``--config FILE`` reads a TOML file whose keys are a subcommand's option names (``seeds``,
``batch-size`` or ``batch_size``, ...), at its top level or in a table named after the
subcommand (``[rules]``, ``[kd]``), which wins over the top level. The command line wins
over both. Unknown keys and values of the wrong type are refused, naming the key.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import tomllib
from collections.abc import Mapping
from typing import Any


def load_toml(path: str | pathlib.Path, command: str, parser: argparse.ArgumentParser) -> dict:
    """The option values of ``command`` in the TOML file ``path``, checked against
    ``parser``'s options; returns ``{dest: value}``."""
    path = pathlib.Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"--config: no such file {str(path)!r}") from None
    except tomllib.TOMLDecodeError as err:
        raise SystemExit(f"--config {path}: not valid TOML: {err}") from None
    tables = {"rules", "kd", "lf-summary", "bench"}
    values = {k: v for k, v in raw.items() if k not in tables}
    section = raw.get(command, {})
    if not isinstance(section, Mapping):
        raise SystemExit(f"--config {path}: [{command}] must be a table")
    values.update(section)
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    out = {}
    for key, value in values.items():
        dest = key.replace("-", "_")
        if dest not in actions:
            known = ", ".join(sorted(d.replace("_", "-") for d in actions))
            raise SystemExit(
                f"--config {path}: unknown option {key!r} for 'amal-jax {command}' (known: {known})"
            )
        out[dest] = _checked(actions[dest], key, value, path)
    return out


def _checked(action: argparse.Action, key: str, value: Any, path: pathlib.Path) -> Any:
    where = f"--config {path}: {key}"
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise SystemExit(f"{where} must be true or false; got {value!r}")
        return value
    if isinstance(value, bool):
        raise SystemExit(f"{where} must not be a boolean; got {value!r}")
    kind = action.type
    if kind is int and not isinstance(value, int):
        raise SystemExit(f"{where} must be an integer; got {value!r}")
    if kind is float:
        if not isinstance(value, int | float):
            raise SystemExit(f"{where} must be a number; got {value!r}")
        value = float(value)
    if kind not in (int, float) and kind is not None:
        if isinstance(value, list):  # e.g. hidden = [64, 64]
            value = ",".join(map(str, value))
        value = kind(str(value))
    if action.choices is not None and value not in action.choices:
        raise SystemExit(f"{where} must be one of {list(action.choices)}; got {value!r}")
    return value


def to_toml(values: Mapping[str, Any], header: str = "") -> str:
    """Flat ``values`` as TOML (strings, numbers, booleans, lists of them; None left out)."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    for key, value in values.items():
        if value is None:
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML has no {value}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
