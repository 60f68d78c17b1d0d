"""Parameters of the graph: one YAML file in ROS 2 params format, shared by ``ros2 launch`` and the CLI.

``perception.params.yaml`` beside this module holds every default with its documentation; a user file
(``--config FILE`` or the launch argument ``params_file``) overrides any subset of it. The format is
what ``ros2 launch`` passes to nodes (``<node>: {ros__parameters: {...}}``, nested maps allowed), so
one file drives a vehicle and an offline replay alike. Values are what rcl can load (scalars, strings,
flat lists): a list of pairs is written as parallel lists (:data:`PARALLEL_LISTS`). Types, ranges,
descriptions and what needs a restart are in :mod:`perception_nodes.config.schema`.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

DEFAULTS_PATH = Path(__file__).resolve().parent / "perception.params.yaml"

T = TypeVar("T")


class ConfigError(ValueError):
    """A parameter file that does not fit the documented parameters."""


def _merge(base: dict, override: dict, where: str, errors: list[str] | None = None) -> dict:
    """``override`` over ``base``; an unknown key is a ConfigError, or with ``errors`` noted there and
    skipped (so every mistake of a file is reported at once)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in out and base:  # an empty default map is free-form
            msg = f"unknown parameter {where}{key} (see {DEFAULTS_PATH.name})"
            if errors is None:
                raise ConfigError(msg)
            errors.append(msg)
            continue
        if isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value, f"{where}{key}.", errors)
        else:
            out[key] = value
    return out


def _params_of(doc: dict, path: Path | str) -> dict[str, dict]:
    out = {}
    for node, body in (doc or {}).items():
        if not isinstance(body, dict) or "ros__parameters" not in body:
            raise ConfigError(f"{path}: node {node!r} needs a 'ros__parameters' map")
        out[node.lstrip("/")] = body["ros__parameters"] or {}
    return out


def load_params(path: str | Path | None = None) -> dict[str, dict]:
    """Defaults, overridden by ``path`` when given; returns node name -> parameter tree."""
    defaults = _params_of(yaml.safe_load(DEFAULTS_PATH.read_text()), DEFAULTS_PATH)
    if path is None:
        return defaults
    p = Path(path)
    try:
        user = _params_of(yaml.safe_load(p.read_text()), p)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
    errors: list[str] = []  # every mistake of the file, reported together
    merged = _merge_user(defaults, user, p, errors)
    errors = [e if e.startswith(f"{p}: ") else f"{p}: {e}" for e in errors]  # each names the file
    out = {}
    for node, tree in merged.items():
        try:
            out[node] = _checked(node, tree, f"{p}: ")
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("; ".join(errors))
    return out


def _merge_user(defaults: dict[str, dict], user: dict[str, dict], p: Path, errors: list[str]) -> dict[str, dict]:
    merged = dict(defaults)
    for node, params in user.items():
        if node == "**":  # ROS wildcard: offered to every node, taken by those that have the parameter
            unused = set(params)
            for n, v in merged.items():
                known = {k: params[k] for k in params if k in v}
                unused -= set(known)
                merged[n] = _merge(v, known, f"{n}.", errors)
            if unused:
                errors.append(f"{p}: no node has parameter(s) {', '.join(sorted(unused))}")
            continue
        if node not in merged:
            errors.append(f"{p}: unknown node {node!r} (known: {', '.join(sorted(merged))})")
            continue
        merged[node] = _merge(merged[node], params, f"{node}.", errors)
    return merged


def _checked(node: str, tree: dict, where: str) -> dict:
    """Types and ranges of :mod:`perception_nodes.config.schema`, as rcl would enforce them live."""
    from perception_nodes.config.schema import check_values

    return unflatten(check_values(node, flatten(tree), where))


#: dataclass field -> the parallel flat lists that carry it in the params file. rcl cannot load nested
#: lists ("Sequences cannot be key"), so a list of pairs is written as one list per column.
PARALLEL_LISTS: dict[str, tuple[str, ...]] = {"ring_zones": ("ring_zone_starts", "ring_zone_widths")}


def _zip_parallel(values: dict[str, Any], names: set[str], where: str) -> dict[str, Any]:
    values = dict(values)
    for field, columns in PARALLEL_LISTS.items():
        present = [c for c in columns if c in values]
        if field not in names or not present:
            continue
        if len(present) != len(columns):
            missing = sorted(set(columns) - set(present))
            raise ConfigError(f"{where}{present[0]} needs {', '.join(where + m for m in missing)} beside it")
        cols = [list(values.pop(c)) for c in columns]
        if len({len(c) for c in cols}) != 1:
            raise ConfigError(f"{where}{', '.join(columns)} must have the same length")
        values[field] = [list(row) for row in zip(*cols)]
    return values


def to_dataclass(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build a frozen parameter dataclass, rejecting unknown keys with a clear message.

    A field listed in :data:`PARALLEL_LISTS` may also be given as its flat columns (the params file's
    form); the dataclass's own ``ValueError`` (a value out of its domain) becomes a ConfigError.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = _zip_parallel(values, names, where)
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown parameter(s) {where}{', '.join(sorted(unknown))} for {cls.__name__}")
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in values:
            v = values[f.name]
            kwargs[f.name] = _tuples(v)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: {exc}") from exc


def _tuples(v: Any) -> Any:
    """YAML lists become (nested) tuples so parameter dataclasses stay hashable."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """Nested parameter maps to ROS dotted names (``a: {b: 1}`` -> ``a.b``)."""
    out = {}
    for k, v in params.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for name, v in flat.items():
        cur = out
        *parents, leaf = name.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = v
    return out
