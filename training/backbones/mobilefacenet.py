"""MobileFaceNet (Chen et al. 2018): depthwise bottlenecks and a global depthwise conv head."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from training.backbones.registry import register_backbone


class ConvBlock(nn.Sequential):
    """Conv-BN, with PReLU unless linear."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        linear: bool = False,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if not linear:
            layers.append(nn.PReLU(cout))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: expand, depthwise, project; residual when shapes agree."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            ConvBlock(cin, hidden),
            ConvBlock(hidden, hidden, 3, stride, 1, groups=hidden),
            ConvBlock(hidden, cout, linear=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """About 1M parameters; 112x112 in, embedding_dim out."""

    # (expansion, out channels, repeats, stride)
    SETTINGS: ClassVar[list[tuple[int, int, int, int]]] = [
        (2, 64, 5, 2),
        (4, 128, 1, 2),
        (2, 128, 6, 1),
        (4, 128, 1, 2),
        (2, 128, 2, 1),
    ]

    def __init__(self, *, embedding_dim: int = 128, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            ConvBlock(3, width, 3, 2, 1),  # (B, 64, 56, 56)
            ConvBlock(width, width, 3, 1, 1, groups=width),
        ]
        cin = width
        for expansion, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(Bottleneck(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        layers.append(ConvBlock(cin, 512))  # (B, 512, 7, 7)
        layers.append(ConvBlock(512, 512, 7, 1, 0, groups=512, linear=True))  # global depthwise
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(512, embedding_dim, bias=False)
        self.features = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.body(x), 1)  # (B, 512)
        return self.features(self.fc(x))  # (B, D)


@register_backbone("mobilefacenet")
def mobilefacenet(*, embedding_dim: int = 128, **kwargs: object) -> nn.Module:
    """MobileFaceNet; 128-d by default (a small model)."""
    return MobileFaceNet(embedding_dim=embedding_dim, **kwargs)  # type: ignore[arg-type]
