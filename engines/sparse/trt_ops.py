"""Static check: which ops of an ONNX model TensorRT 10's ONNX parser cannot build natively.

The table is TensorRT 10's operator support matrix (onnx-tensorrt ``docs/operators.md``, opsets
9-20) reduced to what decides "needs a plugin or fails to parse": unsupported op types, and the
attribute restrictions that bite exported networks -- above all ScatterND/ScatterElements with a
``reduction`` (core TensorRT has no scatter-add), which is why the sparse convolution is exported
output-stationary as Gather + MatMul. Also flags float64 tensors (TensorRT casts DOUBLE down) and
static tensors of 2^31 elements or more (TensorRT's indexing limit).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

# Ops the TensorRT 10 ONNX parser builds natively (default ONNX domain).
TRT10_SUPPORTED: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool
    BatchNormalization BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Cast CastLike Ceil
    Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
    DequantizeLinear Div Dropout DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike Flatten
    Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
    Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid
    HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization
    LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool LRN LSTM MatMul Max MaxPool
    Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN
    RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin
    Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze STFT Sub Sum Tan Tanh
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)


@dataclass(frozen=True)
class TrtIssue:
    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op_type} ({self.node or 'unnamed'}): {self.reason}"


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def check_model(model: onnx.ModelProto | str) -> list[TrtIssue]:
    """Every node (subgraphs included) that TensorRT 10 would not build without a plugin."""
    if isinstance(model, str):
        model = onnx.load(model)
    issues: list[TrtIssue] = []

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                issues.append(TrtIssue(node.name, op, f"custom domain {node.domain!r} needs a plugin"))
            elif op not in TRT10_SUPPORTED:
                issues.append(TrtIssue(node.name, op, "not supported by the TensorRT 10 ONNX parser"))
            elif op in ("ScatterND", "ScatterElements"):
                red = _attr(node, "reduction", b"none")
                red = red.decode() if isinstance(red, bytes) else str(red)
                if red != "none":
                    issues.append(TrtIssue(node.name, op, f"reduction={red!r} is not supported (no scatter-add in core TensorRT)"))
            elif op in ("Conv", "ConvTranspose") and len(node.input) > 1:
                if not any(init.name == node.input[1] for init in graph.initializer):
                    issues.append(TrtIssue(node.name, op, "weights must be an initializer"))
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        visit(g)
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            tt = vi.type.tensor_type
            if tt.elem_type == onnx.TensorProto.DOUBLE:
                issues.append(TrtIssue(vi.name, "tensor", "float64 tensor (TensorRT casts DOUBLE to float)"))
        for init in graph.initializer:
            if init.data_type == onnx.TensorProto.DOUBLE:
                issues.append(TrtIssue(init.name, "initializer", "float64 initializer"))
            n = 1
            for d in init.dims:
                n *= d
            if n >= 2**31:
                issues.append(TrtIssue(init.name, "initializer", "2^31 elements or more"))

    visit(model.graph)
    return issues


def op_histogram(model: onnx.ModelProto | str) -> dict[str, int]:
    if isinstance(model, str):
        model = onnx.load(model)
    out: dict[str, int] = {}
    for node in model.graph.node:
        out[node.op_type] = out.get(node.op_type, 0) + 1
    return dict(sorted(out.items()))
