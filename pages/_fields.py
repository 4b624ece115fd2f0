"""Widgets generated from a dataclass field's metadata (lab.recipe, TrainConfig, TrainingSettings): the label, the
bounds, the step, the format, the choices and the tooltip come from the field, so a page never retypes a bound.

    batch = field_input(c[0], TrainConfig, "batch_size", key="t_batch", value=4, most=LIMITS.max_batch_size)
"""

from __future__ import annotations

from dataclasses import fields

import streamlit as st


def metadata(cls, name: str) -> dict:
    """The metadata of field `name` of dataclass `cls` (a KeyError names a field that does not exist)."""
    return {f.name: f.metadata for f in fields(cls)}[name]


def field_input(where, cls, name: str, key: str, value, most: float | None = None, extra_help: str = "",
                label: str | None = None, **kw):
    """The widget for one field: a checkbox (bool), a selectbox (choices) or a number input (its min, max, step,
    format). `most` lowers the field's maximum to a server's limit; `extra_help` follows the field's help.
    Other keyword arguments (bind, disabled, format_func) go to the widget."""
    meta = metadata(cls, name)
    where = st if where is None else where
    label = label or meta.get("label", name)
    help_text = (meta["help"] + " " + extra_help).strip()
    if isinstance(value, bool):
        return where.checkbox(label, value, key=key, help=help_text, **kw)
    if "choices" in meta or "options" in kw:  # `options`: a subset of the choices (e.g. what this device runs)
        options = list(kw.pop("options", meta.get("choices", ())))
        return where.selectbox(label, options, index=options.index(value), key=key, help=help_text, **kw)
    top = meta.get("max")
    if most is not None:
        top = most if top is None else min(top, most)
    number = float if isinstance(value, float) else int
    low = None if meta.get("min") is None else number(meta["min"])
    top = None if top is None else number(top)
    if top is not None:
        value = min(value, top)  # a server whose limit is below the default starts at its limit
    if "step" in meta:
        kw.setdefault("step", number(meta["step"]))
    if "format" in meta:
        kw.setdefault("format", meta["format"])
    return where.number_input(label, low, top, value, key=key, help=help_text, **kw)
