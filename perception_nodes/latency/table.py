"""Text table of latency health from ``/diagnostics`` key-values (what ``monitor`` prints).

Percentiles come from each node's rolling window; the table shows that window's sample count ``n``
and marks a percentile with ``*`` when the window holds too few samples for it to mean more than
the largest sample: p50 needs at least 2, p99 at least 100 (``1 / (1 - p)``). So ``monitor --once``
right after start-up does not present p50 = p99 = max from one sample as a distribution.
"""

from __future__ import annotations

from collections.abc import Mapping

COLUMNS = ("count", "p50_ms", "p99_ms", "max_ms", "jitter_ms", "budget_ms", "deadline_misses")
HEADERS = {"count": "n"}
#: samples a percentile needs before it says more than the maximum does
MIN_SAMPLES = {"p50_ms": 2, "p99_ms": 100}
LEVELS = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}


def _cell(col: str, cols: Mapping[str, str]) -> str:
    value = cols.get(col, "-")
    need = MIN_SAMPLES.get(col)
    if need is not None and value != "-":
        try:
            n = int(cols.get("count", "0"))
        except ValueError:
            n = 0
        if n < need:
            return value + "*"
    return value


def rows_from_values(node: str, values: Mapping[str, str]) -> list[tuple[str, ...]]:
    """``<key>.<column>`` entries of one latency status -> one row per key."""
    keys: dict[str, dict[str, str]] = {}
    for name, value in values.items():
        key, _, col = name.rpartition(".")
        if col in COLUMNS and key:
            keys.setdefault(key, {})[col] = value
    return [(node, key, *(_cell(c, cols) for c in COLUMNS)) for key, cols in sorted(keys.items())]


def format_table(statuses: Mapping[str, tuple[int, str, Mapping[str, str]]]) -> str:
    """statuses: status name -> (level, message, values). Only ``<node>: latency`` statuses give rows."""
    header = ("node", "stage", *(HEADERS.get(c, c) for c in COLUMNS))
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
    if any(c.endswith("*") for r in rows for c in r[2:]):
        notes.insert(0, "* percentile from too few samples in the window (n): p50 needs 2, p99 needs 100")
    return "\n".join(lines + notes)
