"""Formatting numbers for people: bytes, counts, tables."""

from __future__ import annotations

from collections.abc import Sequence


def fmt_bytes(n: float | None, unit: str = "auto") -> str:
    """Decimal units (GB = 1e9), matching how GPU memory and tutorials are quoted."""
    if n is None:
        return "—"
    if unit == "auto":
        for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
            if abs(n) >= size:
                return f"{n / size:,.2f} {unit}"
        return f"{n:,.0f} B"
    size = {"GB": 1e9, "MB": 1e6, "KB": 1e3, "GiB": 2**30, "MiB": 2**20, "B": 1}[unit]
    return f"{n / size:,.2f} {unit}"


def fmt_count(n: int | float) -> str:
    """1234567 -> '1.23M'."""
    for suffix, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{suffix}"
    return f"{n:,.0f}"


def fmt_seconds(seconds: float | None, unknown: str = "at a time not known yet") -> str:
    """'about 20 s', 'about 3 min': durations and waits are estimates, so they are rounded like one (the one
    place the lab words a duration: queues, ETAs, the instructor's tables, the CLI)."""
    if seconds is None:
        return unknown
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    return f"about {round(seconds / 60)} min"


def fmt_limit(name: str, value) -> str:
    """A server limit for people: bytes as MB/GB, big counts with their suffix, a list or 'none' (not '()'),
    seconds with their unit. `name` is the limit's field name (max_upload_bytes, max_params, config_seconds…)."""
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value)) or "none"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if name.endswith("_bytes"):
        return fmt_bytes(value)
    if name.endswith("_seconds"):
        return f"{value:g} s"
    return fmt_count(value) if value >= 1e6 else f"{value:,}"


def format_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A plain-text table with aligned columns (numbers right-aligned)."""
    show_header = any(headers)
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True)
        ).rstrip()

    head = [line(cells[0]), "  ".join("-" * w for w in widths)] if show_header else []
    return "\n".join(head + [line(r) for r in cells[1:]])


def _is_number(s: str) -> bool:
    try:
        float(s.replace(",", "").rstrip("%").split(" ")[0])
        return True
    except ValueError:
        return s in ("", "—")
