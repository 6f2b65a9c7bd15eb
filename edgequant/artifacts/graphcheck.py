"""Tensor sizes that graph formats declare (ONNX, OpenVINO IR), checked against the data present before a runtime
allocates them: a runtime sizes a constant from its declared shape, so a shape that claims gigabytes over a few
bytes of data would be allocated first and compared after."""

from __future__ import annotations

import math

# OpenVINO IR element types and port precisions, in bytes; anything else is refused (edgequant's IR uses f32, i8, i64).
IR_ITEMSIZE = {
    **dict.fromkeys(("f64", "i64", "u64", "FP64", "I64", "U64"), 8),
    **dict.fromkeys(("f32", "i32", "u32", "FP32", "I32", "U32"), 4),
    **dict.fromkeys(("f16", "bf16", "i16", "u16", "FP16", "BF16", "I16", "U16"), 2),
    **dict.fromkeys(("i8", "u8", "boolean", "I8", "U8", "BOOL", "BOOLEAN", "u1", "U1", "i4", "u4", "I4", "U4"), 1),
}


def _onnx_tensors(graph):
    """Every tensor a graph carries: initializers and node attributes, subgraphs included."""
    if len(graph.sparse_initializer):
        raise ValueError("sparse initializers, which edgequant never writes")
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("sparse_tensor") or len(attribute.sparse_tensors):
                raise ValueError(f"a sparse tensor in node {node.name!r}, which edgequant never writes")
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in [attribute.g] * attribute.HasField("g") + list(attribute.graphs):
                yield from _onnx_tensors(subgraph)


# ONNX element types edgequant's models use (and their plain relatives): element size in bytes.
ONNX_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8}


def check_tensors(graph) -> None:
    """Every ONNX tensor is of a plain numeric type, in the file, and holds exactly the data its shape declares."""
    import onnx

    for tensor in _onnx_tensors(graph):
        if tensor.data_type not in ONNX_ITEMSIZE or any(d < 0 for d in tensor.dims):
            raise ValueError(f"tensor {tensor.name!r} of type {tensor.data_type} or with a negative dimension")
        if tensor.data_location != onnx.TensorProto.DEFAULT:
            raise ValueError(f"tensor {tensor.name!r} in an external file")
        numel = math.prod(tensor.dims)
        if tensor.raw_data:
            stored, expected = len(tensor.raw_data), numel * ONNX_ITEMSIZE[tensor.data_type]
        else:
            stored = sum(len(getattr(tensor, f)) for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"))
            expected = numel
        if stored != expected:
            raise ValueError(
                f"tensor {tensor.name!r} declares {numel} elements and holds {stored} {'bytes' if tensor.raw_data else 'values'}"
            )


def check_inferred_sizes(model, limit: int) -> None:
    """The values ONNX shape inference can size (constant shapes propagated, the dynamic batch counted as one
    image) fit in `limit` bytes together: ONNX Runtime folds constant subgraphs (ConstantOfShape, Expand) when it
    loads a model, so a shape of constants asks for memory before anything runs."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
        raise ValueError(f"shapes ONNX cannot infer ({str(exc).strip().splitlines()[0][:200]})") from exc
    total = 0
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        kind = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in kind.shape.dim]
        total += math.prod(dims) * ONNX_ITEMSIZE.get(kind.elem_type, 8)
    if total > limit:
        raise ValueError(f"values of {total} bytes by their inferred shapes, over the {limit} a model may plan")


def _dims(port) -> list[int]:
    values = [dim.text.strip() if dim.text else "" for dim in port.findall("dim")]
    if not all(v == "-1" or v.isdigit() for v in values):
        raise ValueError(f"a port with dimensions {values[:6]}")
    return [1 if v == "-1" else int(v) for v in values]  # -1: the dynamic batch, counted as one image


def check_ir_sizes(root, weights_bytes: int, limit: int) -> None:
    """Constants are the size their shape declares and lie inside the weights; the outputs declared by every layer
    together fit within `limit` bytes."""
    total = 0
    for layer in root.iter("layer"):
        data = layer.find("data")
        offset, size = (data.get("offset"), data.get("size")) if data is not None else (None, None)
        placed = offset is not None or size is not None
        if placed and (not (offset or "").isdigit() or not (size or "").isdigit() or int(offset) + int(size) > weights_bytes):
            raise ValueError(f"a constant at offset {offset} of {size} bytes lies outside the weights file")
        if layer.get("type") == "Const" and data is not None:
            kind, shape = data.get("element_type"), data.get("shape", "")
            dims = [d.strip() for d in shape.split(",") if d.strip()]
            if kind not in IR_ITEMSIZE or not all(d.isdigit() for d in dims) or size is None:
                raise ValueError(f"constant {layer.get('name')!r} with shape {shape!r}, type {kind!r} and no size")
            if math.ceil(math.prod(map(int, dims)) * IR_ITEMSIZE[kind] / (2 if kind[-1] in "14" else 1)) > int(size):
                raise ValueError(f"constant {layer.get('name')!r} of shape [{shape}] holds only {size} bytes")
        for port in layer.findall("output/port"):
            precision = port.get("precision", "FP32")
            if precision not in IR_ITEMSIZE:
                raise ValueError(f"an output of precision {precision!r}")
            total += math.prod(_dims(port)) * IR_ITEMSIZE[precision]
    if total > limit:
        raise ValueError(f"layer outputs of {total} bytes, over the {limit} a model may plan")
