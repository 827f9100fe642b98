"""The one check that a config field holds a value of its declared type.

A config read from a hand-edited config.json, a sweep file or a Python call can hold
``"p": "53"``, ``53.0`` or ``"lr": "1e-3"``; without this check such a value either fails deep
inside with a traceback (``"1e-3" <= 0``) or, worse, is used as it is (``steps=100.5`` trains
100 steps and records 100.5). The declared annotation of each dataclass field says what is
allowed; this reads it (the simple types only: int, float, str, bool, each optionally
``| None``) and normalises numbers (a numpy integer becomes an int, an int given for a float
becomes a float) so config.json round-trips exactly.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import fields

_KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def _accepts(kind: str, value) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):  # True is an int to Python, never a count or a rate to a config
        return False
    if kind == "int":
        return isinstance(value, numbers.Integral)
    if kind == "float":
        return isinstance(value, numbers.Real)
    return isinstance(value, str)


def checked_values(klass, values: Mapping) -> dict:
    """``values`` (field name -> value, some of the fields of the dataclass ``klass``) with
    numbers normalised, or ValueError naming ``Class.field`` when one holds the wrong type.
    ``RunConfig.from_dict`` checks a config.json's values with it before constructing."""
    declared = {f.name: f.type for f in fields(klass)}
    out = dict(values)
    for name, value in values.items():
        kinds = [k.strip() for k in str(declared.get(name, "")).split("|")]
        optional = "None" in kinds
        kinds = [k for k in kinds if k != "None"]
        if len(kinds) != 1 or kinds[0] not in _KINDS or (value is None and optional):
            continue  # tuples, sequences, tables: their own checks in __post_init__
        kind = kinds[0]
        if not _accepts(kind, value):
            hint = " (without quotes)" if isinstance(value, str) and kind in ("int", "float") else ""
            raise ValueError(f"{klass.__name__}.{name} must be {_KINDS[kind]}"
                             f"{' or null' if optional else ''}{hint}, got {value!r}")
        if kind in ("int", "float"):
            out[name] = int(value) if kind == "int" else float(value)
    return out


def check_field_types(config) -> None:
    """Raise ValueError naming ``Class.field`` when a field of the frozen dataclass ``config``
    holds a value of the wrong type; normalise the numbers of the right one in place (called
    first in each config's ``__post_init__``)."""
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    for name, value in checked_values(type(config), values).items():
        if value is not values[name]:
            object.__setattr__(config, name, value)
