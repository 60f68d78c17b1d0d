"""Sparse convolution engine: kernel maps by sorted coordinate merges, two dataflows with an
offline-tuned choice between them (tune files, no timing in the live path), spconv-compatible
weights, and ONNX export as per-offset GatherND + MatMul + ScatterND (no TensorRT plugin).

See docs/sparse_conv.md for the design, the weight layout and the measured speed.
"""

from .autotune import Autotuner, default_tuner, run_dataflow, set_default_tuner
from .conv import (
    SparseConv3d,
    SparseConvTranspose3d,
    SparseInverseConv3d,
    SubMConv3d,
    dense_weight,
    ours_to_spconv_weight,
    sparse_conv,
    spconv_weight_to_ours,
)
from .dense import to_bev, to_dense
from .geometry import ConvGeometry
from .kernel_map import KernelMap, KernelMapCache, build_kernel_map
from .norm import SparseBatchNorm, SparseLeakyReLU, SparseReLU, SparseSequential
from .tensor import SparseTensor
from .voxelize import VoxelGrid, devoxelize_trilinear, voxel_to_points, voxelize_mean

__all__ = [
    "Autotuner",
    "ConvGeometry",
    "KernelMap",
    "KernelMapCache",
    "SparseBatchNorm",
    "SparseConv3d",
    "SparseConvTranspose3d",
    "SparseInverseConv3d",
    "SparseLeakyReLU",
    "SparseReLU",
    "SparseSequential",
    "SparseTensor",
    "SubMConv3d",
    "VoxelGrid",
    "build_kernel_map",
    "default_tuner",
    "dense_weight",
    "devoxelize_trilinear",
    "ours_to_spconv_weight",
    "run_dataflow",
    "set_default_tuner",
    "sparse_conv",
    "spconv_weight_to_ours",
    "to_bev",
    "to_dense",
    "voxel_to_points",
    "voxelize_mean",
]
