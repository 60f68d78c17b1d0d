"""Text table of latency health from ``/diagnostics`` key-values (what ``monitor`` prints)."""

from __future__ import annotations

from collections.abc import Mapping

COLUMNS = ("p50_ms", "p99_ms", "max_ms", "jitter_ms", "budget_ms", "deadline_misses")
LEVELS = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}


def rows_from_values(node: str, values: Mapping[str, str]) -> list[tuple[str, ...]]:
    """``<key>.<column>`` entries of one latency status -> one row per key."""
    keys: dict[str, dict[str, str]] = {}
    for name, value in values.items():
        key, _, col = name.rpartition(".")
        if col in COLUMNS and key:
            keys.setdefault(key, {})[col] = value
    return [(node, key, *(cols.get(c, "-") for c in COLUMNS)) for key, cols in sorted(keys.items())]


def format_table(statuses: Mapping[str, tuple[int, str, Mapping[str, str]]]) -> str:
    """statuses: status name -> (level, message, values). Only ``<node>: latency`` statuses give rows."""
    header = ("node", "stage", *COLUMNS)
    rows: list[tuple[str, ...]] = []
    notes = []
    for name, (level, message, values) in sorted(statuses.items()):
        node = name.split(":")[0]
        if name.endswith(": latency"):
            rows += rows_from_values(node, values)
        if level:
            notes.append(f"[{LEVELS.get(level, level)}] {name}: {message}")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + notes)
