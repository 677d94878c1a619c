"""The one strict YAML reader of config files and search spaces: duplicate keys refused, 1e-4 read as a float."""

from __future__ import annotations

import re
from typing import Any

import jsonargparse
import yaml

# PyYAML follows YAML 1.1, where 1e-4 is a string; learning rates are written that way, so read them as floats.
FLOAT_PATTERN = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$")
PARSER_MODE = "yaml_strict"  # the jsonargparse parser mode of every lit_tuning parser (registered below)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping sets the same key twice: YAML keeps the last one silently, lit_tuning refuses it."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads 1e-4 as a float."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise DuplicateKeyError(
                f"duplicate key {key!r} at line {key_node.start_mark.line + 1}; allowed: each key once per mapping"
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_PATTERN, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Load one YAML document strictly; raise yaml.YAMLError (DuplicateKeyError for a repeated key)."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects


def one_line(error: yaml.YAMLError) -> str:
    """A YAML error on one line (PyYAML's messages span several, with a caret under the column)."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip() and part.strip() != "^")


def _parser_load(text: str) -> Any:
    load_yaml(text)  # refuses duplicate keys; jsonargparse's own loader then reads the value as it always has
    return jsonargparse.get_loader("yaml")(text)


jsonargparse.set_loader(PARSER_MODE, _parser_load, exceptions=(yaml.YAMLError,))


def file_problem(path: str) -> str | None:
    """Say why a config file cannot be a fit config (invalid YAML, a duplicate key, not a mapping), else None."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = load_yaml(handle.read())
    except (OSError, UnicodeDecodeError):
        return None  # the parser reports missing or unreadable files itself
    except yaml.YAMLError as error:
        return f"config file {path}: {one_line(error)}"
    if document is not None and not isinstance(document, dict):
        return (
            f"config file {path}: top level is a {type(document).__name__}; "
            "allowed: a mapping of config keys (trainer, model, data, ...)"
        )
    return None
