"""Typed settings for every ftl-ct program: a dataclass filled from defaults, TOML, env, flags.

Precedence, lowest first: dataclass defaults -> ``--config`` TOML file ->
environment (``{PREFIX}_{FIELD}``, ``{PREFIX}_{TABLE}_{FIELD}`` for nested
tables, e.g. ``FTLCT_CLOUD_MQTT_PASSWORD``) -> command-line flags. Unknown TOML
keys and unknown ``{PREFIX}_*`` variables are errors, so a typo does not
silently fall back to a default. Field types drive the parsing: ``bool``,
``int``, ``float``, ``str``, ``Path``, ``X | None`` (empty = None), ``list[X]``
(comma-separated in the environment), ``dict`` (a TOML table or inline table);
a field's ``metadata["parse"]`` callable overrides that (e.g. sizes like "2GiB").
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def user_data_dir(program: str) -> Path:
    """``$XDG_DATA_HOME/{program}``, else ``~/.local/share/{program}``: a program's state, not the cwd."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / program


class SettingsError(ValueError):
    """A config file, environment variable or flag with a bad name or value."""


def load_settings(
    cls: type[T],
    config: str | os.PathLike | None,
    env_prefix: str,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """An instance of the dataclass ``cls`` from defaults, ``config``, ``env`` and ``overrides``.

    ``overrides`` maps field names (``"mqtt.username"`` for nested) to values;
    ``None`` values are skipped (flags the user did not give).
    """
    settings = cls()
    if config is not None:
        path = Path(config)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise SettingsError(f"config file not found: {path}") from exc
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"config {path}: {exc}") from exc
        _apply_table(settings, data, str(path))
    _apply_env(settings, os.environ if env is None else env, env_prefix.rstrip("_"))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            target, name = _resolve(settings, dotted)
            setattr(target, name, _coerce(target, name, value, dotted))
    return settings


def _apply_table(target, data: dict, where: str, prefix: str = "") -> None:
    known = {f.name for f in dataclasses.fields(target)}
    for key, value in data.items():
        if key not in known:
            what = f"section [{prefix}{key}]" if isinstance(value, dict) else f"setting {key!r}"
            raise SettingsError(f"{where}: unknown {what} (known: {', '.join(sorted(known))})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise SettingsError(f"{where}: [{prefix}{key}] must be a table")
            _apply_table(current, value, f"{where} [{prefix}{key}]", f"{prefix}{key}.")
        else:
            setattr(target, key, _coerce(target, key, value, f"{where}: {prefix}{key}"))


def _env_names(settings, prefix: str, dotted: str = "") -> dict[str, tuple[Any, str, str]]:
    """``{VARIABLE: (object, field name, dotted name)}`` for every leaf setting."""
    names = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        var = f"{prefix}_{field.name.upper()}"
        if dataclasses.is_dataclass(value):
            names.update(_env_names(value, var, f"{dotted}{field.name}."))
        else:
            names[var] = (settings, field.name, f"{dotted}{field.name}")
    return names


def _apply_env(settings, env: Mapping[str, str], prefix: str) -> None:
    names = _env_names(settings, prefix)
    for var, text in env.items():
        if not var.startswith(f"{prefix}_"):
            continue
        if var not in names:
            raise SettingsError(f"unknown environment setting {var}")
        target, name, dotted = names[var]
        setattr(target, name, _coerce(target, name, text, f"{var} ({dotted})"))


def _resolve(settings, dotted: str):
    *path, name = dotted.split(".")
    target = settings
    for part in path:
        target = getattr(target, part, None)
        if not dataclasses.is_dataclass(target):
            raise SettingsError(f"unknown setting {dotted}")
    if name not in {f.name for f in dataclasses.fields(target)}:
        raise SettingsError(f"unknown setting {dotted}")
    return target, name


def _coerce(target, name: str, value, where: str):
    """``value`` converted to the declared type of ``target.name`` (strings from env parse)."""
    field = next(f for f in dataclasses.fields(target) if f.name == name)
    try:
        parse = field.metadata.get("parse")
        if parse is not None:
            return parse(value)
        return _convert(value, typing.get_type_hints(type(target))[name])
    except (TypeError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{where}: {exc}") from exc


def _convert(value, kind):
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        (inner,) = [a for a in typing.get_args(kind) if a is not type(None)]
        return _convert(value, inner)
    if origin is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"not a list: {value!r}")
        return [_convert(v, item) for v in value]
    if origin is dict or kind is dict:
        if isinstance(value, str):
            value = tomllib.loads(f"x = {value}")["x"]
        if not isinstance(value, dict):
            raise ValueError(f"not a table: {value!r}")
        return dict(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ValueError(f"not a boolean: {value!r}")
    if isinstance(value, bool):
        raise ValueError(f"not a {kind.__name__}: {value!r}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"not an integer: {value!r}")
        return int(value)
    if kind is float:
        return float(value)
    if kind is str:
        if not isinstance(value, str | int | float):
            raise ValueError(f"not a string: {value!r}")
        return str(value)
    if kind is Path:
        if not isinstance(value, str | os.PathLike):
            raise ValueError(f"not a path: {value!r}")
        return Path(value).expanduser()
    raise ValueError(f"unsupported setting type {kind}")  # pragma: no cover
