"""Backbone registry: register, create, list, with loud errors for unknown names."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

BackboneFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: make a factory available under ``name``; duplicate names are a bug."""

    def wrap(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_backbones() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def create_backbone(name: str, *, embedding_dim: int = 512, **kwargs: object) -> nn.Module:
    """Build a backbone that maps (B, 3, 112, 112) to (B, embedding_dim)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}")
    return _REGISTRY[name](embedding_dim=embedding_dim, **kwargs)
