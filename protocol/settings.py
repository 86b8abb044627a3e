"""Typed settings for every ftl-ct program: a dataclass filled from defaults, TOML, env, flags.

Precedence, lowest first: dataclass defaults -> ``--config`` TOML file ->
environment (``{PREFIX}_{FIELD}``, ``{PREFIX}_{TABLE}_{FIELD}`` for nested
tables, e.g. ``FTLCT_CLOUD_MQTT_PASSWORD``) -> command-line flags. Unknown TOML
keys are errors, so a typo does not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


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
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"config {path}: {exc}") from exc
        _apply_table(settings, data, str(path))
    _apply_env(settings, env if env is not None else os.environ, env_prefix)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            target, name = _resolve(settings, dotted)
            setattr(target, name, _coerce(target, name, value, f"--{dotted}"))
    return settings


def _apply_table(target, data: dict, where: str) -> None:
    known = {f.name: f for f in dataclasses.fields(target)}
    for key, value in data.items():
        if key not in known:
            raise SettingsError(
                f"{where}: unknown setting {key!r} (known: {', '.join(sorted(known))})"
            )
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise SettingsError(f"{where}: [{key}] must be a table")
            _apply_table(current, value, f"{where} [{key}]")
        else:
            setattr(target, key, _coerce(target, key, value, f"{where}: {key}"))


def _apply_env(settings, env: Mapping[str, str], prefix: str) -> None:
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value):
            _apply_env(value, env, f"{prefix}_{field.name.upper()}")
            continue
        name = f"{prefix}_{field.name.upper()}"
        if name in env:
            setattr(settings, field.name, _coerce(settings, field.name, env[name], name))


def _resolve(settings, dotted: str):
    *path, name = dotted.split(".")
    target = settings
    for part in path:
        target = getattr(target, part)
    if name not in {f.name for f in dataclasses.fields(target)}:
        raise SettingsError(f"unknown setting {dotted!r}")
    return target, name


def _coerce(target, name: str, value, where: str):
    """``value`` converted to the declared type of ``target.name`` (strings from env parse)."""
    kind = typing.get_type_hints(type(target))[name]
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError(f"not a boolean: {value!r}")
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"not an integer: {value!r}")
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(f"not a number: {value!r}")
            return float(value)
        if kind is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(f"not a string: {value!r}")
            return str(value)
        if origin is dict or kind is dict:
            if isinstance(value, str):
                value = tomllib.loads(f"x = {value}")["x"]
            if not isinstance(value, dict):
                raise ValueError(f"not a table: {value!r}")
            return dict(value)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{where}: {exc}") from exc
    raise SettingsError(f"{where}: unsupported setting type {kind}")  # pragma: no cover
