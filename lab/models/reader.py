"""A model's architecture from what a person gave: a model spec (anything `resolve_source` accepts)
or the text of an uploaded config.json. The building itself is `architecture.architecture_from_config`;
this module sits above the sources and public-mode admission that it goes through first."""

from __future__ import annotations

import json
from pathlib import Path

from lab import policy
from lab.errors import LabError
from lab.models.architecture import (
    Architecture,
    architecture_from_config,
    config_from_dict,
    keep_for_text,
    kept_for_text,
)
from lab.models.public import architecture_within_limits
from lab.models.sources import ModelSource, resolve_source


def read_architecture(source: str | ModelSource, name: str | None = None) -> Architecture:
    """The architecture of `source` (anything `resolve_source` accepts), cached per config."""
    if isinstance(source, str):
        source = resolve_source(source)
    name = name or source.display_name
    text = source.config_text()
    arch = kept_for_text(text, name) if text is not None else None
    if arch is None:
        arch = architecture_from_config(source.load_config(), name)
        if text is not None:
            keep_for_text(text, name, arch)
    return arch


def read_architecture_json(text: str | bytes, name: str = "uploaded config") -> Architecture:
    """The architecture of a config.json given as text (an upload on a page). In public mode the
    upload is bounded in size, declared structure and time before transformers builds it."""
    if policy.public_mode():
        return architecture_within_limits(policy.read_config_bytes(text, name), name)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise LabError(f"{name} is not a UTF-8 text file, so it cannot be a config.json.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LabError(f"{name} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None
    return architecture_from_config(config_from_dict(data, name), Path(name).stem or name)
