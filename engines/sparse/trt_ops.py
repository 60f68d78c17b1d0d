"""Check an ONNX model against TensorRT's ONNX-parser operator table before building an engine.

The table is data (:mod:`.trt_onnx_table`, TensorRT 10.1 -- the pinned version; see
``requirements/gpu.txt``). Every node of the graph (subgraphs included) is checked for

* op type: in the table as supported, else "not supported" (listed N) or "unknown to the table";
  custom domains need a plugin; the model's opset must be in the table's range;
* tensor type: the node's data input (its first input; first output for source nodes) must be one
  of the types the table lists for that op; DOUBLE is accepted with a warning (TensorRT casts it
  down to float);
* the table's restrictions that an exported network can hit, as rules: ScatterND has no
  ``reduction``; ``axes``/``axis``/``depth``/``K``/``training_mode`` inputs of CumSum, Pad, Reduce*,
  Slice, Squeeze, Unsqueeze, OneHot, TopK, Dropout must be build-time constants; TopK ``sorted=1``
  and K < 3840; MaxPool without its ``Indices`` output; LayerNormalization only its first output;
  pooling ``dilations`` all ones; Constant without sparse/string values;
* size: any tensor whose element count can reach 2^31 (TensorRT indexes elements with int32).
  Dynamic axes are bounded by ``dim_bounds`` (default: the bounds :func:`.export.export_onnx`
  stores in the model for its ``max_voxels``); a tensor with an axis that cannot be bounded gets a
  warning, since the check cannot clear it.

Issues carry a severity: ``error`` (the parser rejects the node or the engine cannot hold the
tensor) or ``warning`` (builds, but check by hand).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

import onnx
from onnx import TensorProto

from .trt_onnx_table import OPSET_RANGE, SOURCE, SUPPORTED, TRT_VERSION, UNSUPPORTED

ELEMENT_LIMIT = 2**31 - 1  # largest element count TensorRT's int32 indexing can address

# TensorProto data type -> the table's type name
_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8", TensorProto.INT8: "INT8", TensorProto.DOUBLE: "DOUBLE",
}
for _n in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ"):
    if hasattr(TensorProto, _n):
        _TYPE_NAMES[getattr(TensorProto, _n)] = "FP8"
if hasattr(TensorProto, "INT4"):
    _TYPE_NAMES[TensorProto.INT4] = "INT4"

_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSum", "ReduceSumSquare")
# op -> {input position: what it is}; the table requires these inputs to be build-time constants
CONST_INPUTS: dict[str, dict[int, str]] = {
    "CumSum": {1: "axis"}, "Pad": {3: "axes"}, "Slice": {3: "axes"}, "Squeeze": {1: "axes"},
    "Unsqueeze": {1: "axes"}, "OneHot": {1: "depth"}, "TopK": {1: "K"}, "Dropout": {2: "training_mode"},
    **{op: {1: "axes"} for op in _REDUCE},
}
_QUANTIZED_IO = {"QuantizeLinear", "DequantizeLinear", "Cast", "CastLike"}


@dataclass(frozen=True)
class TrtIssue:
    node: str
    op_type: str
    reason: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"[{self.severity}] {self.op_type} ({self.node or 'unnamed'}): {self.reason}"


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def stored_bounds(model: onnx.ModelProto) -> Optional[dict[str, int]]:
    """Dynamic-axis bounds that :func:`.export.export_onnx` stored in the model (None if absent)."""
    from .export import BOUNDS_KEY

    for p in model.metadata_props:
        if p.key == BOUNDS_KEY:
            return {k: int(v) for k, v in json.loads(p.value)["bounds"].items()}
    return None


class _Consts:
    """Which tensor names hold build-time constants, and their values when small."""

    def __init__(self, graph: onnx.GraphProto, outer: Optional["_Consts"] = None) -> None:
        self.values: dict[str, object] = dict(outer.values) if outer else {}
        for init in graph.initializer:
            self.values[init.name] = onnx.numpy_helper.to_array(init)
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                try:
                    t = _attr(node, "value")
                    self.values[node.output[0]] = onnx.numpy_helper.to_array(t) if t is not None else None
                except Exception:  # noqa: BLE001 - a constant we cannot decode is still a constant
                    self.values[node.output[0]] = None

    def known(self, name: str) -> bool:
        return name in self.values


def _type_of(name: str, types: Mapping[str, int]) -> Optional[str]:
    t = types.get(name)
    return None if t is None else _TYPE_NAMES.get(t, TensorProto.DataType.Name(t))


def _check_node(node: onnx.NodeProto, consts: _Consts, types: Mapping[str, int]) -> list[TrtIssue]:
    op, name = node.op_type, node.name
    out: list[TrtIssue] = []
    if node.domain not in ("", "ai.onnx"):
        return [TrtIssue(name, op, f"custom domain {node.domain!r}: needs a TensorRT plugin")]
    if op in UNSUPPORTED:
        return [TrtIssue(name, op, f"listed as not supported by the TensorRT {TRT_VERSION} ONNX parser")]
    if op not in SUPPORTED:
        return [TrtIssue(name, op, f"not in the TensorRT {TRT_VERSION} operator table")]

    # tensor type of the node's data input
    if op not in _QUANTIZED_IO:
        probe = node.input[0] if node.input and node.input[0] else (node.output[0] if node.output else "")
        tname = _type_of(probe, types)
        if tname == "DOUBLE":
            out.append(TrtIssue(name, op, f"{probe!r} is DOUBLE: TensorRT casts it down to float", "warning"))
        elif tname is not None and tname not in SUPPORTED[op]:
            out.append(TrtIssue(name, op, f"{probe!r} has type {tname}; the table allows {sorted(SUPPORTED[op])}"))

    # restrictions from the table, as rules
    for pos, what in CONST_INPUTS.get(op, {}).items():
        if len(node.input) > pos and node.input[pos] and not consts.known(node.input[pos]):
            out.append(TrtIssue(name, op, f"input {what!r} must be a build-time constant (initializer/Constant)"))
    if op == "ScatterND" and _attr(node, "reduction", "none") != "none":
        out.append(TrtIssue(name, op, f"reduction={_attr(node, 'reduction')!r} is not supported (no scatter-add)"))
    if op == "TopK":
        if _attr(node, "sorted", 1) != 1:
            out.append(TrtIssue(name, op, "sorted must be 1"))
        k = consts.values.get(node.input[1]) if len(node.input) > 1 else None
        if k is not None and int(getattr(k, "max", lambda: k)()) >= 3840:
            out.append(TrtIssue(name, op, "K must be below 3840"))
    if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
        out.append(TrtIssue(name, op, "the Indices output is not supported"))
    if op == "LayerNormalization" and any(o for o in node.output[1:]):
        out.append(TrtIssue(name, op, "only the first output (Y) is supported"))
    if op in ("AveragePool", "MaxPool", "LpPool"):
        dil = _attr(node, "dilations")
        if dil and any(d != 1 for d in dil):
            out.append(TrtIssue(name, op, "dilations must be empty or all ones"))
    if op == "Constant" and any(a.name in ("sparse_value", "value_string", "value_strings") for a in node.attribute):
        out.append(TrtIssue(name, op, "sparse/string constants are not supported"))
    if op == "Dropout" and len(node.input) > 2 and node.input[2]:
        v = consts.values.get(node.input[2])
        if v is not None and bool(v):
            out.append(TrtIssue(name, op, "training_mode must evaluate to False"))
    return out


def _shapes(graph: onnx.GraphProto) -> Iterable[tuple[str, list]]:
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            yield vi.name, [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    for init in graph.initializer:
        yield init.name, list(init.dims)


# ops whose (first) output holds exactly as many elements as their first input
_SAME_COUNT = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Relu", "LeakyRelu", "Sigmoid",
               "Tanh", "Cast", "CastLike", "Neg", "Abs", "Exp", "Log", "Sqrt", "Erf", "Clip", "Softmax",
               "BatchNormalization", "ScatterND", "ScatterElements", "Dropout"}


def _size_issues(graph: onnx.GraphProto, bounds: Mapping[str, int], limit: int) -> list[TrtIssue]:
    out: list[TrtIssue] = []
    count: dict[str, int] = {}  # tensor -> upper bound of its element count
    free_axes: dict[str, tuple[list, int]] = {}  # tensor -> (dims, partial product) when some axis is unbounded
    dims_of: dict[str, list] = {}
    for name, dims in _shapes(graph):
        if name in dims_of:
            continue
        dims_of[name] = dims
        n, free = 1, []
        for d in dims:
            if isinstance(d, int):
                n *= d
            elif d is not None and d in bounds:
                n *= int(bounds[d])
            else:
                free.append(d or "?")
        if free and n > 0:
            free_axes[name] = (free, n)
        else:
            count[name] = n
    # a count-preserving op passes its input's bound on (Reshape to a data-dependent shape, ...)
    for node in graph.node:
        if node.op_type in _SAME_COUNT and node.input and node.output and node.output[0] not in count:
            if node.input[0] in count:
                count[node.output[0]] = count[node.input[0]]
                free_axes.pop(node.output[0], None)
    for name, n in count.items():
        if n > limit:
            dims = dims_of.get(name)
            shown = {d: bounds[d] for d in (dims or []) if isinstance(d, str) and d in bounds}
            out.append(TrtIssue(name, "tensor", f"can hold {n} elements (> 2^31-1; dims {dims}, bounds {shown})"))
    for name, (free, n) in free_axes.items():
        if n > limit:
            out.append(TrtIssue(name, "tensor", f"holds over {n} elements (> 2^31-1) even before its unbounded axes {free}"))
    rest = [nm for nm, (_, n) in free_axes.items() if n <= limit]
    if rest:
        out.append(TrtIssue(", ".join(rest[:5]) + (" ..." if len(rest) > 5 else ""), "tensor",
                            f"{len(rest)} tensor(s) with an axis no bound covers: 2^31 limit not checked", "warning"))
    return out


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes with symbolic axes carried through Shape/Concat/ConstantOfShape/Reshape (ONNX Runtime's
    symbolic inference) where it works, else ONNX's own inference, else the model as it is."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # noqa: BLE001 - fall back to the plainer inference
        pass
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - check what we can without inferred shapes
        return model


def check_model(model: onnx.ModelProto | str, dim_bounds: Optional[Mapping[str, int]] = None,
                limit: int = ELEMENT_LIMIT) -> list[TrtIssue]:
    """Every node and tensor the TensorRT ONNX parser would reject or that needs a look (see module doc)."""
    if isinstance(model, str):
        model = onnx.load(model)
    issues: list[TrtIssue] = []
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not OPSET_RANGE[0] <= imp.version <= OPSET_RANGE[1]:
            issues.append(TrtIssue("", "model", f"opset {imp.version} outside the parser's {OPSET_RANGE}"))
    inferred = _infer_shapes(model)
    bounds = dict(stored_bounds(model) or {})
    bounds.update(dim_bounds or {})

    def visit(graph: onnx.GraphProto, outer: Optional[_Consts]) -> None:
        consts = _Consts(graph, outer)
        types: dict[str, int] = {}
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
        for init in graph.initializer:
            types[init.name] = init.data_type
        for node in graph.node:
            issues.extend(_check_node(node, consts, types))
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g, consts)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        visit(g, consts)
        issues.extend(_size_issues(graph, bounds, limit))

    visit(inferred.graph, None)
    return issues


def errors(issues: Iterable[TrtIssue]) -> list[TrtIssue]:
    return [i for i in issues if i.severity == "error"]


def op_histogram(model: onnx.ModelProto | str) -> dict[str, int]:
    if isinstance(model, str):
        model = onnx.load(model)
    out: dict[str, int] = {}
    for node in model.graph.node:
        out[node.op_type] = out.get(node.op_type, 0) + 1
    return dict(sorted(out.items()))


__all__ = ["ELEMENT_LIMIT", "SOURCE", "TRT_VERSION", "TrtIssue", "check_model", "errors", "op_histogram", "stored_bounds"]
