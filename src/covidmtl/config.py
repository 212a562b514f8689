"""Loading and validating the workflow configuration outside Snakemake (tests, notebooks).

Inside the workflow, Snakemake's own ``validate`` applies the same schema
(``workflow/schemas/config.schema.yaml``); both fill in the schema's defaults,
which are the papers' values.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


def _with_defaults(validator_class):
    """A validator that fills in ``default`` values while validating (jsonschema FAQ recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        for name, subschema in properties.items():
            if isinstance(instance, dict) and "default" in subschema:
                instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def deep_update(base: dict, override: dict) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (Snakemake's --configfile semantics)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def validate(config: dict, schema: dict | None = None) -> dict:
    """Validate ``config`` in place, filling defaults; raises jsonschema.ValidationError."""
    schema = schema or load_schema()
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    validator.validate(config)
    return config


def load_config(paths: Iterable[str | Path] = (), overrides: dict | None = None) -> dict:
    """Merge YAML files in order (later wins), then ``overrides``; validate and fill defaults."""
    config: dict[str, Any] = {}
    for path in paths:
        config = deep_update(config, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    if overrides:
        config = deep_update(config, overrides)
    return validate(config)


def parse_params(text: str | None) -> dict:
    """Parse the ``--params`` JSON string that rules pass to entry points."""
    if not text:
        return {}
    return json.loads(text)
