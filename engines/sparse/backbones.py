"""Reference sparse backbones built from the engine's modules.

``VoxelBackbone8x`` mirrors the CenterPoint/SECOND VoxelNet 3D backbone (OpenPCDet's
``VoxelBackBone8x``): submanifold blocks and three stride-2 stages, 16 -> 128 channels, output at
stride (8, 8, 16). Module names and nesting match OpenPCDet, so its spconv checkpoints load with
``load_state_dict`` (spconv 5-D weights are converted on the fly; OpenPCDet indexes (b, z, y, x),
the default ``spconv_axis_order``). Kernel, stride and padding triples here are in our (x, y, z)
order: OpenPCDet's ``padding=(0, 1, 1)`` in (z, y, x) is ``(1, 1, 0)`` here.
"""

from __future__ import annotations

from torch import nn

from .conv import SparseConv3d, SubMConv3d
from .geometry import Triple
from .norm import SparseSequential
from .tensor import SparseTensor


def _block(cin: int, cout: int, kernel: int | Triple, stride: int | Triple = 1, padding: int | Triple = 0,
           kind: str = "subm", indice_key: str | None = None, dataflow: str = "auto") -> SparseSequential:
    if kind == "subm":
        conv: nn.Module = SubMConv3d(cin, cout, kernel, bias=False, indice_key=indice_key, dataflow=dataflow)
    else:
        conv = SparseConv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False, indice_key=indice_key,
                            dataflow=dataflow)
    return SparseSequential(conv, nn.BatchNorm1d(cout, eps=1e-3, momentum=0.01), nn.ReLU())


class VoxelBackbone8x(nn.Module):
    """SubM + strided stages, 16 -> 128 channels (CenterPoint-VoxelNet-like)."""

    def __init__(self, in_channels: int = 4, dataflow: str = "auto") -> None:
        super().__init__()
        d = dataflow
        self.conv_input = _block(in_channels, 16, 3, indice_key="subm1", dataflow=d)
        self.conv1 = SparseSequential(_block(16, 16, 3, indice_key="subm1", dataflow=d))
        self.conv2 = SparseSequential(
            _block(16, 32, 3, 2, 1, kind="spconv", indice_key="spconv2", dataflow=d),
            _block(32, 32, 3, indice_key="subm2", dataflow=d),
            _block(32, 32, 3, indice_key="subm2", dataflow=d),
        )
        self.conv3 = SparseSequential(
            _block(32, 64, 3, 2, 1, kind="spconv", indice_key="spconv3", dataflow=d),
            _block(64, 64, 3, indice_key="subm3", dataflow=d),
            _block(64, 64, 3, indice_key="subm3", dataflow=d),
        )
        self.conv4 = SparseSequential(
            _block(64, 64, 3, 2, (1, 1, 0), kind="spconv", indice_key="spconv4", dataflow=d),
            _block(64, 64, 3, indice_key="subm4", dataflow=d),
            _block(64, 64, 3, indice_key="subm4", dataflow=d),
        )
        self.conv_out = _block(64, 128, (1, 1, 3), (1, 1, 2), 0, kind="spconv", indice_key="spconv_down2", dataflow=d)

    def forward(self, x: SparseTensor) -> SparseTensor:
        x = self.conv_input(x)
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.conv3(x)
        x = self.conv4(x)
        return self.conv_out(x)
