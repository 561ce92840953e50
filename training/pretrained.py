"""Fine-tuning from a pretrained recognizer: a registered ONNX model imported into torch.

``model.init=sface-2021dec`` starts training from the registry's SFace instead of random
weights. The ONNX graph is turned into a trainable torch module (``OnnxRecognizer``), checked
against ONNX Runtime on real aligned faces, and trained with any head of the family; the
manifest it came from supplies the preprocessing, the alignment template and the embedding size,
so the exported model is fed exactly as the original was.

Why not onnx2torch: it imports torchvision at import time, and no torchvision wheel imports
beside the CPU torch build these machines install. Recognizers use a handful of inference ops
(convolution, batch norm, PReLU, adds, a fully connected layer), so a small interpreter that
turns each into its torch module does the job, and exports again with torch's exporter.

Load fix, exact: constant sub-graphs (SFace reshapes its folded weights at run time) are
evaluated once into initializers (``fold_constants``), so every weight is a plain tensor.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from service.models import Manifest, resolve_model
from training.backbones import create_backbone
from training.config import ModelConfig
from training.data import Normalisation

log = logging.getLogger(__name__)

#: the import is accepted when ONNX Runtime and torch agree this closely (max |diff| of outputs)
PARITY_MAX_ABS_DIFF = 1e-4


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate every node whose inputs are all constants (initializers, Constant nodes or their
    results) into an initializer; the rest of the graph is left as it is."""
    graph = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    keep = []
    for node in graph.node:
        inputs = [n for n in node.input if n]
        if node.op_type == "Dropout" or not all(n in consts for n in inputs):
            keep.append(node)
            continue
        single = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node],
                "fold",
                [],
                [
                    onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                    for o in node.output
                ],
                [numpy_helper.from_array(consts[n], n) for n in inputs],
            ),
            opset_imports=model.opset_import,
        )
        for name, value in zip(node.output, ReferenceEvaluator(single).run(None, {}), strict=True):
            consts[name] = np.asarray(value)
    used = {n for node in keep for n in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(keep)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items() if k in used)
    return model


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _key(name: str) -> str:
    """An ONNX tensor name as a module / parameter name."""
    return "t_" + re.sub(r"\W", "_", name)


class _BatchNorm(nn.Module):
    """ONNX BatchNormalization on any rank (N, C, ...), trainable, with running statistics."""

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(
        self,
        scale: np.ndarray,
        bias: np.ndarray,
        mean: np.ndarray,
        var: np.ndarray,
        eps: float,
        momentum: float,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(scale.copy()))
        self.bias = nn.Parameter(torch.from_numpy(bias.copy()))
        self.register_buffer("running_mean", torch.from_numpy(mean.copy()))
        self.register_buffer("running_var", torch.from_numpy(var.copy()))
        self.eps = eps
        self.momentum = 1.0 - momentum  # ONNX keeps `momentum` of the old statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
        )


class _PRelu(nn.Module):
    def __init__(self, slope: np.ndarray) -> None:
        super().__init__()
        self.slope = nn.Parameter(torch.from_numpy(slope.copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, x * self.slope)


class OnnxRecognizer(nn.Module):
    """An ONNX recognizer's graph as a torch module: one submodule per weighted node (Conv,
    BatchNormalization, PRelu, Gemm), constants as buffers, run in the graph's order.

    Supported ops: Conv, BatchNormalization, PRelu, Relu, Sigmoid, Add, Sub, Mul, Gemm, MatMul,
    Flatten, Reshape (constant shape), Dropout, GlobalAveragePool. Anything else raises
    ValueError at import, naming the op."""

    SUPPORTED = frozenset(
        {
            "Conv",
            "BatchNormalization",
            "PRelu",
            "Relu",
            "Sigmoid",
            "Add",
            "Sub",
            "Mul",
            "Min",  # the served SFace's PRelus, rewritten as x + (s - 1) * min(x, 0)
            "Gemm",
            "MatMul",
            "Flatten",
            "Reshape",
            "Dropout",
            "GlobalAveragePool",
        }
    )

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        unsupported = {n.op_type for n in graph.node} - self.SUPPORTED
        if unsupported:
            raise ValueError(
                f"cannot import ops {sorted(unsupported)} (supported: {sorted(self.SUPPORTED)})"
            )
        self.input_name = next(i.name for i in graph.input if i.name not in consts)
        self.output_name = graph.output[0].name
        self.layers = nn.ModuleDict()
        self.steps: list[tuple[str, str, list[str], str, dict[str, Any]]] = []
        used_consts: set[str] = set()
        for index, node in enumerate(graph.node):
            attrs = _attrs(node)
            key = f"n{index}_{node.op_type.lower()}"
            inputs = [n for n in node.input if n]
            op = node.op_type
            if op == "Conv":
                weight = consts[inputs[1]]
                pads = attrs.get("pads", [0, 0, 0, 0])
                if pads[:2] != pads[2:]:
                    raise ValueError(f"asymmetric padding {pads} in {node.name}")
                conv = nn.Conv2d(
                    weight.shape[1] * attrs.get("group", 1),
                    weight.shape[0],
                    tuple(weight.shape[2:]),
                    stride=tuple(attrs.get("strides", [1, 1])),
                    padding=tuple(pads[:2]),
                    dilation=tuple(attrs.get("dilations", [1, 1])),
                    groups=attrs.get("group", 1),
                    bias=len(inputs) > 2,
                )
                conv.weight.data = torch.from_numpy(weight.copy())
                if conv.bias is not None:
                    conv.bias.data = torch.from_numpy(consts[inputs[2]].copy())
                self.layers[key] = conv
                inputs = inputs[:1]
            elif op == "BatchNormalization":
                scale, bias, mean, var = (consts[n] for n in inputs[1:5])
                eps, momentum = attrs.get("epsilon", 1e-5), attrs.get("momentum", 0.9)
                self.layers[key] = _BatchNorm(scale, bias, mean, var, eps, momentum)
                inputs = inputs[:1]
            elif op == "PRelu":
                self.layers[key] = _PRelu(consts[inputs[1]])
                inputs = inputs[:1]
            elif op == "Gemm":
                if (
                    attrs.get("transA", 0)
                    or attrs.get("alpha", 1.0) != 1.0
                    or attrs.get("beta", 1.0) != 1.0
                ):
                    raise ValueError(f"Gemm {node.name} with transA/alpha/beta is not supported")
                weight = consts[inputs[1]]
                weight = weight if attrs.get("transB", 0) else weight.T
                linear = nn.Linear(weight.shape[1], weight.shape[0], bias=len(inputs) > 2)
                linear.weight.data = torch.from_numpy(np.array(weight, copy=True))
                if linear.bias is not None:
                    linear.bias.data = torch.from_numpy(consts[inputs[2]].reshape(-1).copy())
                self.layers[key] = linear
                inputs = inputs[:1]
            elif op == "Dropout":
                ratio = float(consts[inputs[1]]) if len(inputs) > 1 else attrs.get("ratio", 0.5)
                self.layers[key] = nn.Dropout(p=ratio)
                inputs = inputs[:1]
            elif op == "Reshape":
                attrs["shape"] = [int(v) for v in consts[inputs[1]]]
                inputs = inputs[:1]
            for name in inputs:
                if name in consts and name not in used_consts:
                    self.register_buffer(_key(name), torch.from_numpy(np.array(consts[name])))
                    used_consts.add(name)
            self.steps.append((key, op, inputs, node.output[0], attrs))
        self._consts = used_consts

    def _value(self, values: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        if name in self._consts:
            tensor: torch.Tensor = getattr(self, _key(name))
            return tensor
        return values[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {self.input_name: x}
        for key, op, inputs, output, attrs in self.steps:
            args = [self._value(values, n) for n in inputs]
            if key in self.layers:
                out = self.layers[key](args[0])
            elif op == "Add":
                out = args[0] + args[1]
            elif op == "Sub":
                out = args[0] - args[1]
            elif op == "Mul":
                out = args[0] * args[1]
            elif op == "Min":
                out = torch.minimum(args[0], args[1].to(args[0].dtype))
            elif op == "MatMul":
                out = args[0] @ args[1]
            elif op == "Relu":
                out = torch.relu(args[0])
            elif op == "Sigmoid":
                out = torch.sigmoid(args[0])
            elif op == "Flatten":
                out = torch.flatten(args[0], start_dim=attrs.get("axis", 1))
            elif op == "GlobalAveragePool":
                out = args[0].mean(dim=(2, 3), keepdim=True)
            else:  # Reshape: 0 keeps that dimension, as in ONNX
                shape = [args[0].shape[i] if v == 0 else v for i, v in enumerate(attrs["shape"])]
                out = args[0].reshape(shape)
            values[output] = out
        return values[self.output_name]


def import_recognizer(models_dir: Path, name: str) -> tuple[nn.Module, Manifest, Path]:
    """A registered ONNX recognizer as a trainable torch module, its manifest and weights file.

    Raises ModelError (unknown model, missing or tampered weights) or ValueError (an op the
    importer does not convert)."""
    manifest, weights = resolve_model(models_dir, name)
    if manifest.task != "recognition":
        raise ValueError(f"model.init={name!r} is a {manifest.task} model, not a recognizer")
    return OnnxRecognizer(fold_constants(onnx.load(str(weights)))), manifest, weights


def normalisation_of(manifest: Manifest) -> Normalisation:
    """The preprocessing a manifest declares, as training's normalisation."""
    spec = manifest.input
    return Normalisation(tuple(spec.mean), tuple(spec.std), spec.color_order)  # type: ignore[arg-type]


def parity_with_onnx(
    module: nn.Module, weights: Path, crops: list[np.ndarray], norm: Normalisation
) -> float:
    """Max |diff| between the torch module and ONNX Runtime on real aligned faces; raises
    AssertionError above ``PARITY_MAX_ABS_DIFF``."""
    x = torch.stack([norm.apply(c) for c in crops])
    was_training = module.training
    module.eval()
    with torch.no_grad():
        ref = module(x).numpy()
    module.train(was_training)
    session = ort.InferenceSession(str(weights), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    worst = float(np.abs(ref - got.reshape(ref.shape)).max())
    if worst > PARITY_MAX_ABS_DIFF:
        raise AssertionError(f"the imported model differs from ONNX Runtime by {worst:.2e}")
    log.info("imported %s: max |diff| against ONNX Runtime %.2e", weights.name, worst)
    return worst


def backbone_for(config: ModelConfig) -> tuple[nn.Module, Normalisation, Manifest | None]:
    """The network a config trains: a fresh registry backbone, or the imported ``model.init``
    recognizer. Returns it with the normalisation its inputs need and, for an imported one,
    the manifest it came from (the export copies its preprocessing and template)."""
    if not config.init:
        module = create_backbone(
            config.backbone, embedding_dim=config.embedding_dim, **config.kwargs()
        )
        return module, Normalisation(), None
    module, manifest, _ = import_recognizer(Path(config.models_dir), config.init)
    if manifest.embedding_dim != config.embedding_dim:
        raise ValueError(
            f"model.init={config.init} makes {manifest.embedding_dim}-d embeddings; set "
            f"model.embedding_dim={manifest.embedding_dim}"
        )
    return module, normalisation_of(manifest), manifest
