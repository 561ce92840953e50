"""Face backbones: IResNet-18/34/50/100 and MobileFaceNet, through one registry."""

from training.backbones import iresnet, mobilefacenet  # noqa: F401  (registration)
from training.backbones.registry import create_backbone, list_backbones, register_backbone

__all__ = ["create_backbone", "list_backbones", "register_backbone"]
