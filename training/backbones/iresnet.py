"""IResNet (improved ResNet of ArcFace): BN-Conv-BN-PReLU-Conv-BN blocks, BN-Dropout-FC-BN head."""

from __future__ import annotations

import torch
from torch import nn

from training.backbones.registry import register_backbone


class IBasicBlock(nn.Module):
    """The IResNet basic block."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """IResNet for 112x112 faces; four stages halve the map to 7x7."""

    def __init__(
        self,
        layers: list[int],
        *,
        embedding_dim: int = 512,
        width: int = 64,
        dropout: float = 0.0,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        stages = []
        inplanes = width
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = [IBasicBlock(inplanes, planes, stride=2)]
            stage += [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.stages = nn.Sequential(*stages)
        side = input_size // 16
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(inplanes * side * side, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))  # (B, w, 112, 112)
        x = self.bn2(self.stages(x))  # (B, 8w, 7, 7)
        x = self.fc(self.dropout(torch.flatten(x, 1)))
        return self.features(x)  # (B, D)


def _factory(layers: list[int]) -> object:
    def build(*, embedding_dim: int = 512, **kwargs: object) -> nn.Module:
        return IResNet(layers, embedding_dim=embedding_dim, **kwargs)  # type: ignore[arg-type]

    return build


for _name, _layers in {
    "iresnet18": [2, 2, 2, 2],
    "iresnet34": [3, 4, 6, 3],
    "iresnet50": [3, 4, 14, 3],
    "iresnet100": [3, 13, 30, 3],
}.items():
    register_backbone(_name)(_factory(_layers))  # type: ignore[arg-type]
