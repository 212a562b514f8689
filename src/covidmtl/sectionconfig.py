"""Config sections as dataclasses: build from the JSON a rule passes, list knobs for the schema.

The deep-learning stages (``deep``, ``deepsc``, ``twod``) describe their config section as
nested dataclasses whose attribute docstrings are the knobs' descriptions. This module holds
what they share: strict building from a dict (unknown keys are errors, so a typo cannot
silently fall back to a default), JSON round trips, a fingerprint for checkpoints, and the
knob table that the config schema is checked against.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import json
import textwrap
import typing
from typing import Any


def build(klass, data: dict[str, Any], prefix: str):
    """Instantiate ``klass`` from a (nested) dict; lists become tuples, unknown keys raise."""
    fields = {f.name: f for f in dataclasses.fields(klass)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {prefix} config keys: {sorted(unknown)}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(klass)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ValueError(f"{prefix}.{name} must be a mapping")
            kwargs[name] = build(hint, value, f"{prefix}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return klass(**kwargs)


def field_docs(klass) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    docs: dict[str, str] = {}
    body = tree.body[0].body
    for prev, node in zip(body, body[1:]):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name)
                and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def knob_table(klass, prefix: str) -> list[dict[str, str]]:
    """Every knob as (dotted name, type, default, description), for the schema and the README."""
    rows: list[dict[str, str]] = []

    def walk(node_class, node_prefix: str) -> None:
        hints = typing.get_type_hints(node_class)
        docs = field_docs(node_class)
        for f in dataclasses.fields(node_class):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{node_prefix}.{f.name}")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            hint = hints[f.name]
            type_name = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            rows.append({"name": f"{node_prefix}.{f.name}", "type": type_name,
                         "default": json.dumps(default), "description": docs.get(f.name, "")})

    walk(klass, prefix)
    return rows


class SectionConfig:
    """Mixin for the root dataclass of a config section; subclasses set ``SECTION`` and ``validate``."""

    SECTION: typing.ClassVar[str] = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None):
        cfg = build(cls, dict(data or {}), cls.SECTION)
        cfg.validate()
        return cfg

    @classmethod
    def from_json(cls, text: str | None):
        return cls.from_dict(json.loads(text) if text else {})

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def validate(self) -> None:  # pragma: no cover - overridden
        pass
