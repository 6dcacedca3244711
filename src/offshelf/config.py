"""Workflow config validation: the JSON schema (structure, types, allowed values) plus the checks
a schema cannot express (rows that build valid settings). Errors name the key path and what is
allowed, and are raised before any job starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    pass


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _allowed_keys(schema: dict) -> list[str]:
    return sorted(schema.get("properties", {}))


def _explain(error, root_schema: dict) -> str:
    where = _path(error)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = _allowed_keys(error.schema)
        return f"config key '{where}': unknown key(s) {extra}; allowed keys: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"config key '{where}' = {error.instance!r}; allowed values: {', '.join(map(str, error.validator_value))}"
    if error.validator == "required":
        return f"config key '{where}': {error.message}"
    if error.validator in ("oneOf", "anyOf"):
        return f"config key '{where}' = {error.instance!r} is invalid: expected a positive number or 'inf'"
    return f"config key '{where}' = {error.instance!r}: {error.message}"


def validate_config(config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate ``config`` against the schema, then build every table row's settings."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        # the most specific error first: oneOf wrappers hide their useful context
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_explain(best, schema))

    from offshelf.plan import table_rows

    for regime in config["regimes"]:
        if regime not in config["scales"]:
            raise ConfigError(f"config key 'scales.{regime}' is missing: regime {regime!r} needs a scale grid")
    try:
        table_rows(config)
    except ValueError as err:
        raise ConfigError(f"config key 'tables': {err}") from err
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return validate_config(config)
