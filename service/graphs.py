"""ONNX graph rewrites applied when a model is fetched: what makes a shipped file loadable by
ONNX Runtime (and, where measured, faster), each exact and deterministic, so the produced file's
sha256 can be pinned in its manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def fold_block_quantized(raw: bytes, symbolic: dict[int, str]) -> bytes:
    """Make an OpenCV Zoo block-quantised model loadable by ONNX Runtime.

    ONNX Runtime refuses the files as shipped: they list graph inputs that no node consumes, and
    their DequantizeLinear nodes use blocked quantisation. We drop the unused inputs and fold each
    DequantizeLinear of constant weights into an fp32 initializer, so the cleaned graph computes
    exactly what the reference evaluator computes on the original. ``symbolic`` names the axes
    of the input (and outputs' first axis) made dynamic, e.g. {0: "N"} for a batch.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(raw)
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    folded: dict[str, np.ndarray] = {}
    keep_nodes = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and all(name in inits for name in node.input):
            folded[node.output[0]] = _dequantize(node, inits)
        else:
            keep_nodes.append(node)
    consumed = {name for node in keep_nodes for name in node.input}
    new_inits = [init for init in graph.initializer if init.name in consumed]
    new_inits += [numpy_helper.from_array(arr, name) for name, arr in folded.items()]
    del graph.node[:]
    graph.node.extend(keep_nodes)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    init_names = {init.name for init in new_inits}
    real_inputs = [i for i in graph.input if i.name in consumed and i.name not in init_names]
    del graph.input[:]
    graph.input.extend(real_inputs)
    # Symbolic axes (a batch, an image size); the shipped value_info pins every intermediate to
    # the fixed shapes, so it goes (ONNX Runtime infers shapes itself).
    del graph.value_info[:]
    for value in graph.input:
        for axis, name in symbolic.items():
            value.type.tensor_type.shape.dim[axis].dim_param = name
    for value in graph.output:
        value.type.tensor_type.shape.dim[0].dim_param = symbolic.get(0, "N")
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def _dequantize(node: Any, inits: dict[str, Any]) -> np.ndarray:
    """Compute a (possibly blocked) DequantizeLinear of constant tensors in fp32."""
    from onnx import numpy_helper

    attrs = {a.name: a for a in node.attribute}
    axis = attrs["axis"].i if "axis" in attrs else 1
    block = attrs["block_size"].i if "block_size" in attrs else 0
    x = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    zero = (
        numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        if len(node.input) > 2 and node.input[2]
        else np.zeros_like(scale)
    )
    axis = axis % x.ndim
    if scale.ndim == 0 or scale.size == 1:
        return ((x - zero.reshape(())) * scale.reshape(())).astype(np.float32)
    if block > 0:
        scale = np.repeat(scale, block, axis=axis)
        zero = np.repeat(zero, block, axis=axis)
        index = [slice(None)] * x.ndim
        index[axis] = slice(0, x.shape[axis])
        scale, zero = scale[tuple(index)], zero[tuple(index)]
    else:  # per-axis
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((x - zero) * scale).astype(np.float32)


def clean_sface(raw: bytes) -> bytes:
    """SFace (OpenCV Zoo 2021dec, block-int8): fp32 weights, a dynamic batch."""
    return fold_block_quantized(raw, {0: "N"})


def rewrite_prelu(raw: bytes) -> bytes:
    """Each PRelu(x, s) with a constant slope becomes x + (s - 1) * min(x, 0): the same value
    (x >= 0: x; x < 0: s * x) from Min, Mul and Add, which ONNX Runtime's CPU provider
    vectorises, where its PRelu with a per-channel slope runs a scalar loop per element (about
    half of SFace's time: bench/recognizer_profile.py)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(raw)
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    nodes = []
    zero = "prelu_rewrite_zero"
    added: list[Any] = [numpy_helper.from_array(np.zeros((), np.float32), zero)]
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in inits:
            nodes.append(node)
            continue
        x, slope, out = node.input[0], node.input[1], node.output[0]
        s = numpy_helper.to_array(inits[slope]).astype(np.float32)
        factor = f"{out}_slope_minus_1"
        added.append(numpy_helper.from_array(s - np.float32(1.0), factor))
        nodes += [
            helper.make_node("Min", [x, zero], [f"{out}_neg"], name=f"{node.name}_min"),
            helper.make_node(
                "Mul", [f"{out}_neg", factor], [f"{out}_scaled"], name=f"{node.name}_mul"
            ),
            helper.make_node("Add", [x, f"{out}_scaled"], [out], name=f"{node.name}_add"),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    consumed = {name for node in nodes for name in node.input}
    kept = [init for init in graph.initializer if init.name in consumed]
    del graph.initializer[:]
    graph.initializer.extend(kept + [a for a in added if a.name in consumed])
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def fast_sface(raw: bytes) -> bytes:
    """SFace cleaned (``clean_sface``), then its PRelus rewritten (``rewrite_prelu``)."""
    return rewrite_prelu(clean_sface(raw))


def clean_yunet(raw: bytes) -> bytes:
    """YuNet (OpenCV Zoo 2023mar, block-int8): fp32 weights and any input size (a multiple of
    32; the graph's reshapes already use -1 and its upsampling uses scales, so only the pinned
    640 x 640 had to go). The outputs' anchor axis follows the input."""
    model_bytes = fold_block_quantized(raw, {2: "H", 3: "W"})
    import onnx

    model = onnx.load_from_string(model_bytes)
    for value in model.graph.output:
        value.type.tensor_type.shape.dim[1].dim_param = "A"
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


#: the transforms a manifest's ``source.transform`` may name
TRANSFORMS: dict[str, Callable[[bytes], bytes]] = {
    "none": lambda raw: raw,
    "sface-clean": clean_sface,
    "sface-fast": fast_sface,
    "yunet-clean": clean_yunet,
}
