"""Function-preserving deepening of the LiDAR branch network (Net2DeeperNet, Chen et al. ICLR 2016).

Why: the packaged network does not fit the heading of far cars on its own training scenes, and a network with
twice the layers still meets the latency goal (docs/lidar_branch.md, 16th session). Training such a network from
scratch costs far more than a fine-tune; instead every added layer starts as the identity, so the deeper network
computes exactly what the trained one did and fine-tuning starts from its accuracy, not from noise.

Where a layer may be added so that it starts as the identity: at the end of a stage whose output is a ReLU's
(every stage of the "lite" sparse backbone and both stages of the BEV net end in conv -> BN -> ReLU), with as many
output as input channels. The new layer is conv -> BN -> ReLU with the conv's centre tap the identity matrix and
its other taps zero, the BatchNorm mapping x to x (mean 0, variance 1 - eps, scale 1, shift 0), and the ReLU
passing its non-negative input through. A submanifold convolution keeps the active sites, so at each site its
centre tap sees the site's own features. Appended layers take new module indices and leave every existing
state-dict key where it was, so the small network's tensors load by name.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from perception_nodes.models.lidar_detection import LidarDetectionConfig, LidarDetectionNet

__all__ = ["deepen_lidar_detection", "check_deepening"]


def check_deepening(small: LidarDetectionConfig, deep: LidarDetectionConfig) -> None:
    """Raise ``ValueError`` unless ``deep`` is ``small`` with layers only appended (the "lite" backbone's
    ``subm_per_stage`` and ``bev_layers`` each at least ``small``'s, everything else equal)."""
    a, b = asdict(small), asdict(deep)
    if a["backbone"] != "lite" or b["backbone"] != "lite":
        raise ValueError("deepening is defined for the 'lite' sparse backbone only")
    ba, bb = dict(a.pop("backbone_args")), dict(b.pop("backbone_args"))
    sa, sb = list(ba.pop("subm_per_stage", ())), list(bb.pop("subm_per_stage", ()))
    la, lb = list(a.pop("bev_layers")), list(b.pop("bev_layers"))
    if ba != bb:
        raise ValueError(f"backbone arguments other than subm_per_stage differ: {ba} vs {bb}")
    if len(sa) != len(sb) or any(y < x for x, y in zip(sa, sb)):
        raise ValueError(f"subm_per_stage {sb} does not extend {sa} stage by stage")
    if len(la) != len(lb) or any(y < x for x, y in zip(la, lb)):
        raise ValueError(f"bev_layers {lb} does not extend {la}")
    diff = sorted(k for k in a if a[k] != b[k])
    if diff:
        raise ValueError(f"configs differ beyond the added layers: {diff}")


def _identity_(module: nn.Module) -> None:
    """Set one added conv or BatchNorm to the identity (see the module docstring)."""
    with torch.no_grad():
        if isinstance(module, nn.Conv2d):
            w = module.weight
            if w.shape[0] != w.shape[1] or module.stride != (1, 1) or module.groups != 1:
                raise ValueError(f"an added 2-D conv must map C to C channels at stride 1, got {tuple(w.shape)}")
            w.zero_()
            kh, kw = w.shape[2] // 2, w.shape[3] // 2
            w[:, :, kh, kw] = torch.eye(w.shape[0], dtype=w.dtype)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
            module.running_mean.zero_()
            module.running_var.fill_(1.0 - module.eps)
            if module.num_batches_tracked is not None:
                module.num_batches_tracked.zero_()
        elif getattr(module, "_sparse_module", False) and getattr(module, "kind", None) == "subm":
            w = module.weight  # [K, C_in, C_out]; the centre offset is the middle of the K offsets
            if w.shape[1] != w.shape[2] or any(k % 2 == 0 for k in module.kernel_size):
                raise ValueError(f"an added submanifold conv must map C to C with an odd kernel, got {tuple(w.shape)}")
            w.zero_()
            w[w.shape[0] // 2] = torch.eye(w.shape[1], dtype=w.dtype)
            if module.bias is not None:
                module.bias.zero_()
        else:
            raise ValueError(f"no identity initialisation for an added {type(module).__name__}")


def deepen_lidar_detection(small_state: Mapping[str, Tensor], small: LidarDetectionConfig | Mapping[str, Any],
                           deep: LidarDetectionConfig | Mapping[str, Any]) -> LidarDetectionNet:
    """The network of config ``deep`` holding ``small_state`` (a trained network of config ``small``), its added
    layers at the identity: in eval mode it computes what the small network computes (to float32 rounding).

    Raises ``ValueError`` when ``deep`` is not ``small`` with layers appended, or when the state does not cover
    exactly the small network's tensors."""
    small = small if isinstance(small, LidarDetectionConfig) else LidarDetectionConfig.from_mapping(dict(small))
    deep = deep if isinstance(deep, LidarDetectionConfig) else LidarDetectionConfig.from_mapping(dict(deep))
    check_deepening(small, deep)
    if asdict(small) == asdict(deep):
        raise ValueError("the deep config adds no layer to the small one")
    own_small = LidarDetectionNet(small).state_dict()
    if set(own_small) != set(small_state):
        raise ValueError("the state is not the small network's: "
                         f"missing {sorted(set(own_small) - set(small_state))[:3]}, "
                         f"unexpected {sorted(set(small_state) - set(own_small))[:3]}")
    net = LidarDetectionNet(deep)
    own = net.state_dict()
    bad = [k for k, v in small_state.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f"tensors of the small network that do not fit the deep one: {bad[:3]}")
    added = sorted(set(own) - set(small_state))
    net.load_state_dict({**own, **dict(small_state)}, strict=True)
    owners = sorted({k.rsplit(".", 1)[0] for k in added})
    for name in owners:
        _identity_(net.get_submodule(name))
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    """``python -m perception_nodes.models.deepen --weights DIR --config deep.json --out FILE``: write the deepened
    network's tensors as one safetensors file, for a training config's ``init_from`` (with ``model:`` set to the
    deep config)."""
    import argparse
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from perception_nodes.models.weights_io import load_state, read_sidecar

    ap = argparse.ArgumentParser(prog="python -m perception_nodes.models.deepen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="weights folder of the trained (small) network")
    ap.add_argument("--config", required=True, help="JSON file: the deep network's full LidarDetectionConfig, e.g. "
                    "benchmarks/lidar_capacity/deep.json")
    ap.add_argument("--out", required=True, help="safetensors file to write")
    args = ap.parse_args(argv)
    from perception_nodes.config import ConfigError
    from perception_nodes.models.weights_io import WeightsError

    folder = Path(args.weights)
    try:
        small = dict(read_sidecar(folder, "lidar_detection").get("config") or {})
        deep = json.loads(Path(args.config).read_text())
        if not isinstance(deep, dict):
            raise ValueError(f"{args.config}: expected a JSON object of LidarDetectionConfig keys")
        state = load_state(folder)
        net = deepen_lidar_detection(state, small, deep)
    except (OSError, ValueError, ConfigError, WeightsError) as exc:  # JSONDecodeError is a ValueError
        ap.error(str(exc))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(out))
    added = len(net.state_dict()) - len(state)
    print(f"{out}: {len(net.state_dict())} tensors, {added} of them added at the identity")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
