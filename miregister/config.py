"""Registration settings from a file: ``miregister register --config params.json`` (or ``.toml``).

A configuration file holds the keywords of :func:`miregister.register`: the transform chain
(``transform``), the masks (``fixed_mask``, ``moving_mask``: paths, relative to the file's
folder) and any option of :class:`~miregister.registration.options.RegistrationOptions` or
:class:`~miregister.registration.options.StageOptions`, with the same values as in Python
(per-stage values as a table keyed by stage, per-level ones as lists)::

    {"transform": "rigid+affine", "seed": 3, "iterations": {"rigid": [50, 30], "affine": [60, 40]},
     "shrink_factors": [2, 1], "bins": 64}

A ``report.json`` written by ``miregister register`` is also a configuration file: its
``transform``, ``options`` and ``stage_options`` (every option the run used, defaults included)
and the masks of its ``inputs`` rerun the same registration.
"""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from .errors import UsageError
from .registration.options import RegistrationOptions, StageOptions

__all__ = ["load_config", "CONFIG_KEYS"]

_GLOBAL_KEYS = {f.name for f in fields(RegistrationOptions)} - {"stages"}
_STAGE_KEYS = {f.name for f in fields(StageOptions)}
#: Every key a configuration file may hold.
CONFIG_KEYS = frozenset(_GLOBAL_KEYS | _STAGE_KEYS | {"transform", "fixed_mask", "moving_mask"})


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON or TOML configuration file (or a ``report.json``) into ``register`` keywords.

    Parameters
    ----------
    path : str or PathLike
        ``.json`` or ``.toml`` file (TOML read by ``tomllib``, or ``tomli`` on Python 3.10).

    Returns
    -------
    dict
        Keywords of :func:`miregister.register` (``transform``, ``fixed_mask``,
        ``moving_mask`` and options); mask paths are made absolute.

    Raises
    ------
    UsageError
        When the file is missing or unreadable, not a JSON/TOML table, or holds a key that is
        not a ``register`` keyword (the message names the key and lists the known ones).
    """
    path = Path(path)
    raw = _read(path)
    if _is_report(raw):
        config = _from_report(raw, path)
    else:
        config = dict(raw)
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise UsageError(
            f"configuration file {path}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"known keys: {', '.join(sorted(CONFIG_KEYS))}"
        )
    for key in ("fixed_mask", "moving_mask"):
        if config.get(key) is not None:
            config[key] = str((path.parent / config[key]).resolve()) if not os.path.isabs(config[key]) else config[key]
    return config


def _read(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise UsageError(f"configuration file {path}: expected a .json or .toml file")
    try:
        text = path.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read configuration file {path}: {error.strerror or error}") from None
    try:
        if suffix == ".json":
            data = json.loads(text)
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10: the same parser as the tomli package
                import tomli as tomllib
            data = tomllib.loads(text.decode("utf-8"))
    except UsageError:
        raise
    except ValueError as error:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        raise UsageError(f"configuration file {path} is not valid {suffix[1:].upper()}: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"configuration file {path}: expected a table of keys, got a {type(data).__name__}")
    return data


def _is_report(data: dict[str, Any]) -> bool:
    return "options" in data and "stage_options" in data and "transform" in data


def _from_report(report: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``register`` keywords that reproduce the run a report describes."""
    options, stages = report["options"], report["stage_options"]
    if not isinstance(options, dict) or not isinstance(stages, dict):
        raise UsageError(f"report {path}: 'options' and 'stage_options' must be tables")
    config: dict[str, Any] = {"transform": report["transform"], **options}
    config.pop("verbose", None)  # how much to print is the caller's choice, not the registration's
    for kind, values in stages.items():
        if not isinstance(values, dict):
            raise UsageError(f"report {path}: stage_options[{kind!r}] must be a table")
        for key, value in values.items():
            config.setdefault(key, {})
            if not isinstance(config[key], dict):
                raise UsageError(f"report {path}: {key!r} is both a global and a stage option")
            config[key][kind] = value
    for key in ("fixed_mask", "moving_mask"):
        record = (report.get("inputs") or {}).get(key)
        if record:
            config[key] = record["path"]
    return config
