"""Parameters of the graph: one YAML file in ROS 2 params format, shared by ``ros2 launch`` and the CLI.

``perception.params.yaml`` beside this module holds every default with its documentation; a user file
(``--config FILE`` or the launch argument ``params_file``) overrides any subset of it. The format is
what ``ros2 launch`` passes to nodes (``<node>: {ros__parameters: {...}}``, nested maps allowed), so
one file drives a vehicle and an offline replay alike.
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


def _merge(base: dict, override: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in out and base:  # an empty default map is free-form
            raise ConfigError(f"unknown parameter {where}{key} (see {DEFAULTS_PATH.name})")
        if isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value, f"{where}{key}.")
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
    merged = dict(defaults)
    for node, params in user.items():
        if node == "**":  # ROS wildcard: offered to every node, taken by those that have the parameter
            unused = set(params)
            for n, v in merged.items():
                known = {k: params[k] for k in params if k in v}
                unused -= set(known)
                merged[n] = _merge(v, known, f"{n}.")
            if unused:
                raise ConfigError(f"{p}: no node has parameter(s) {', '.join(sorted(unused))}")
            continue
        if node not in merged:
            raise ConfigError(f"{p}: unknown node {node!r} (known: {', '.join(sorted(merged))})")
        merged[node] = _merge(merged[node], params, f"{node}.")
    return merged


def to_dataclass(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build a frozen parameter dataclass, rejecting unknown keys with a clear message."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown parameter(s) {where}{', '.join(sorted(unknown))} for {cls.__name__}")
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in values:
            v = values[f.name]
            kwargs[f.name] = _tuples(v)
    return cls(**kwargs)


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
