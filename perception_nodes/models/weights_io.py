"""Network weights on disk: one folder per network, ``model.safetensors`` beside a ``model.json`` sidecar.

Why a sidecar: a safetensors file holds tensors only. A node that loads weights must rebuild exactly the
network they were trained for, and a person reading a result must see what produced it. The sidecar
therefore carries everything but the tensors:

* ``format`` (this module's layout version), ``network`` (which network class, e.g. ``lidar_detection``);
* ``config``: the network's configuration as plain data (for the LiDAR branch a
  :class:`~perception_nodes.models.LidarDetectionConfig` mapping, so ``LidarDetectionConfig.from_mapping``
  rebuilds it);
* ``training``: the training config and data split (scenarios, seeds, LiDAR models), epochs, wall time;
* ``code_version``: the git commit the weights came from (``unknown`` outside a checkout);
* ``metrics``: held-out metrics measured after training, free-form;
* ``calibration`` (optional): post-hoc calibration of the outputs fitted on validation scenes
  (:class:`~perception_nodes.models.calibration.DetectionCalibration`; absent = identity, so folders
  written before it existed load and decode as before). :func:`write_calibration` sets it in place.

The packaged default of each network lives in ``perception_nodes/models/weights/<network>/``
(:func:`default_weights_dir`), so an installed node finds it without a path.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

__all__ = ["FORMAT", "WeightsError", "default_weights_dir", "read_sidecar", "save_weights", "load_state",
           "code_version", "load_lidar_detection", "write_calibration"]

#: layout version of the folder (bump when the sidecar's meaning changes)
FORMAT = 1
_MODEL = "model.safetensors"
_SIDECAR = "model.json"


class WeightsError(RuntimeError):
    """A weights folder is missing, incomplete, corrupt or made for another network."""


#: the checkout (or install prefix) holding the package: ``perception_nodes/models/weights_io.py`` -> its root
_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_weights_dir(network: str) -> Path:
    """The packaged weights folder of ``network`` (may not contain weights yet)."""
    return Path(__file__).resolve().parent / "weights" / network


def resolve_weights_folder(value: str | Path | None, network: str) -> Path:
    """The weights folder a node's ``weights`` parameter names.

    Empty: the packaged folder of ``network``. An absolute path, or a relative one that exists from the
    working directory: that path. Otherwise, so that a params file works wherever the node is started from
    (``ros2 launch`` runs it from anywhere): a bare folder name under the packaged weights (e.g.
    ``lidar_detection_realism``), then the path relative to the repository root (e.g.
    ``perception_nodes/models/weights/lidar_detection_realism``). Nothing found: the path as given (the loader
    then says it holds no weights)."""
    if not value:
        return default_weights_dir(network)
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    for base in (default_weights_dir(network).parent, _REPO_ROOT):
        if (base / p).is_dir():
            return base / p
    return p


def code_version(repo: Optional[Path] = None) -> str:
    """``git describe --always --dirty`` of the checkout this code runs from, or ``unknown``."""
    here = repo or _REPO_ROOT
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _plain(value: Any) -> Any:
    """Dataclasses, tuples and mappings as JSON-ready plain data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def save_weights(model: nn.Module, folder: Path | str, *, network: str, config: Any,
                 training: Optional[Mapping[str, Any]] = None, metrics: Optional[Mapping[str, Any]] = None,
                 extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``folder`` (created); returns the folder.

    Tensors are stored contiguous on the CPU in float32 (integer buffers as they are), so the file loads
    anywhere. The sidecar is written last: a folder with a sidecar is complete.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    side = {"format": FORMAT, "network": network, "config": _plain(config), "training": _plain(training or {}),
            "code_version": code_version(), "metrics": _plain(metrics or {}), **_plain(extra or {})}
    sidecar = folder / _SIDECAR
    sidecar.unlink(missing_ok=True)
    save_file(state, str(folder / _MODEL), metadata={"network": network, "format": str(FORMAT)})
    sidecar.write_text(json.dumps(side, indent=2, sort_keys=True) + "\n")
    return folder


def read_sidecar(folder: Path | str, network: Optional[str] = None) -> dict[str, Any]:
    """The sidecar of ``folder``; :class:`WeightsError` if absent, unreadable or for another network."""
    folder = Path(folder)
    path = folder / _SIDECAR
    if not path.is_file() or not (folder / _MODEL).is_file():
        raise WeightsError(f"no weights in {folder} (needs {_MODEL} and {_SIDECAR}); train them with "
                           f"`perception-stack train` or point the parameter at a weights folder")
    try:
        side = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: unreadable sidecar ({exc})") from exc
    if not isinstance(side, dict) or side.get("format") != FORMAT:
        raise WeightsError(f"{path}: sidecar format {side.get('format') if isinstance(side, dict) else '?'}, "
                           f"this code reads format {FORMAT}")
    if network is not None and side.get("network") != network:
        raise WeightsError(f"{path}: weights are for network {side.get('network')!r}, not {network!r}")
    return side


def write_calibration(folder: Path | str, calibration: Mapping[str, Any] | None, *,
                      network: Optional[str] = None, metrics: Optional[Mapping[str, Any]] = None) -> Path:
    """Set (or, with ``None``, remove) the sidecar's ``calibration`` entry of ``folder`` (and, when given,
    replace its ``metrics``); the tensors are not touched. Written to a temporary file and renamed, so a
    reader never sees half a sidecar."""
    import os

    folder = Path(folder)
    side = read_sidecar(folder, network)
    if calibration:
        side["calibration"] = _plain(calibration)
    else:
        side.pop("calibration", None)
    if metrics is not None:
        side["metrics"] = _plain(metrics)
    path = folder / _SIDECAR
    tmp = folder / f".{_SIDECAR}.tmp"
    tmp.write_text(json.dumps(side, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def load_state(folder: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of ``folder``'s ``model.safetensors`` (CPU); :class:`WeightsError` if corrupt."""
    from safetensors.torch import load_file

    path = Path(folder) / _MODEL
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
        raise WeightsError(f"{path}: corrupt or unreadable weights ({type(exc).__name__}: {exc})") from exc


def lidar_config_mismatch(side: Mapping[str, Any]) -> list[str]:
    """Keys on which a LiDAR sidecar's two network configs disagree: ``config`` (what the nodes, the demo and
    the benchmarks build) and ``branch_config.model`` (what ``lidar-eval`` builds). Both are written from one
    config when a run is packaged; an edited sidecar can split them, and then the evaluated network would not
    be the one that runs (defaults filled in before comparing; [] without a ``branch_config``)."""
    from perception_nodes.config import ConfigError
    from perception_nodes.models.lidar_detection import LidarDetectionConfig

    model = (side.get("branch_config") or {}).get("model")
    if model is None:
        return []
    try:
        a = dataclasses.asdict(LidarDetectionConfig.from_mapping(dict(side.get("config") or {})))
        b = dataclasses.asdict(LidarDetectionConfig.from_mapping(dict(model)))
    except ConfigError as exc:
        raise WeightsError(f"the sidecar's network config does not build the network: {exc}") from exc
    return sorted(k for k in a if _plain(a[k]) != _plain(b[k]))


def check_lidar_configs(side: Mapping[str, Any], folder: Any) -> None:
    """:class:`WeightsError` naming the keys where :func:`lidar_config_mismatch` finds the two configs apart
    (or saying they do not build): what both loaders, the nodes' and ``lidar-eval``'s, refuse."""
    try:
        bad = lidar_config_mismatch(side)
    except WeightsError as exc:
        raise WeightsError(f"{folder}: {exc}") from exc
    if bad:
        raise WeightsError(f"{folder}: the sidecar's config and branch_config.model differ on {', '.join(bad)} "
                           "(the evaluated network would not be the one that runs); make them agree")


def load_lidar_detection(folder: Path | str | None = None, *, overrides: Optional[Mapping[str, Any]] = None):
    """Rebuild the LiDAR branch network from a weights folder (default: the packaged one), in eval mode.

    ``overrides`` replace sidecar config keys that do not change the tensors' shapes (e.g. the
    backbone's ``dataflow``); a shape mismatch is a :class:`WeightsError` naming the first bad tensor.
    Returns ``(net, sidecar)``.
    """
    from perception_nodes.models.lidar_detection import LidarDetectionConfig, LidarDetectionNet

    folder = Path(folder) if folder is not None else default_weights_dir("lidar_detection")
    side = read_sidecar(folder, "lidar_detection")
    check_lidar_configs(side, folder)
    cfg_map = dict(side.get("config") or {})
    cfg_map.update(overrides or {})
    cfg = LidarDetectionConfig.from_mapping(cfg_map)
    net = LidarDetectionNet(cfg)
    state = load_state(folder)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(f"{folder}: weights do not match the network (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise WeightsError(f"{folder}: tensor {k} has shape {tuple(v.shape)}, network wants {tuple(own[k].shape)}")
    net.load_state_dict(state, strict=True)
    net.eval()
    return net, side
