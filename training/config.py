"""Training configuration as typed dataclasses; a run's config is saved beside its checkpoints.

Load from JSON and override with dotted keys: ``--head.preset=cosface --optim.lr=0.05``. Every
combination is checked when the config loads, not at step 10,000.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from training.losses import PRESETS, MarginConfig


@dataclass
class DataConfig:
    """Where the aligned training faces are."""

    root: str = ""  # an aligned image folder (one sub-folder per identity)
    rec: str = ""  # or an insightface RecordIO file (.rec with its .idx)
    val_images: str = ""  # LFW-layout image root for verification during training
    val_pairs: str = ""  # pairs.txt
    val_pair_limit: int = 0  # 0: all pairs
    val_cache: str = ""  # where the aligned validation crops are cached (default: the run dir)
    workers: int = 2
    flip: bool = True


@dataclass
class ModelConfig:
    """The backbone."""

    backbone: str = "mobilefacenet"
    embedding_dim: int = 128
    width: int = 0  # channels of the first stage; 0: the backbone's default

    def kwargs(self) -> dict[str, int]:
        """Keyword arguments for create_backbone."""
        return {"width": self.width} if self.width else {}


@dataclass
class HeadConfig:
    """The margin head (a preset, optionally with explicit margins) and Partial FC."""

    preset: str = "arcface"
    scale: float | None = None
    m1: int | None = None
    m2_rad: float | None = None
    m3: float | None = None
    sample_rate: float = 1.0  # Partial FC: fraction of class centres per step

    def margin(self) -> MarginConfig:
        """The validated margin config (preset with overrides)."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown head preset {self.preset!r}; choose from {sorted(PRESETS)}")
        base = PRESETS[self.preset]
        overrides: dict[str, Any] = {
            k: v
            for k, v in {
                "scale": self.scale,
                "m1": self.m1,
                "m2_rad": self.m2_rad,
                "m3": self.m3,
            }.items()
            if v is not None
        }
        return dataclasses.replace(base, **overrides).validate()


@dataclass
class OptimConfig:
    """Optimiser and schedule."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    schedule: Literal["cosine", "poly"] = "cosine"
    poly_power: float = 2.0
    grad_clip: float = 5.0


@dataclass
class TrainConfig:
    """A whole run."""

    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 64
    max_steps: int = 1000
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 20
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 500
    seed: int = 0

    def validate(self) -> TrainConfig:
        """Check combinations; raises ValueError naming the bad key."""
        self.head.margin()
        if bool(self.data.root) == bool(self.data.rec):
            raise ValueError("set exactly one of data.root (aligned folder) or data.rec (RecordIO)")
        if not 0.0 < self.head.sample_rate <= 1.0:
            raise ValueError(f"head.sample_rate must be in (0, 1], got {self.head.sample_rate}")
        if self.batch_size < 2 or self.max_steps < 1:
            raise ValueError("batch_size must be >= 2 and max_steps >= 1")
        if self.optim.lr <= 0:
            raise ValueError("optim.lr must be positive")
        if self.head.preset == "softmax" and self.head.sample_rate < 1.0:
            raise ValueError("Partial FC needs a normalised head; the softmax baseline has a bias")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return asdict(self)

    def save(self, path: Path) -> None:
        """Write as JSON (beside the checkpoints)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _build(cls: type, data: dict[str, Any]) -> Any:
    """Instantiate a (nested) dataclass from a dict, refusing unknown keys."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kwargs[name] = _build(hint, value)  # type: ignore[arg-type]
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _coerce(value: str, hint: Any) -> Any:
    """Turn a command-line string into the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{value!r} is not one of {args}")
        return value
    if hint is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{value!r} is not a boolean")
        return value.lower() in ("true", "1", "yes")
    if hint in (int, float, str):
        return hint(value)
    raise ValueError(f"cannot set a {hint} from the command line")


def apply_override(config: Any, dotted: str, value: str) -> None:
    """Set ``a.b.c=value`` on a nested dataclass, with type coercion."""
    *parents, leaf = dotted.split(".")
    target = config
    for part in parents:
        if not hasattr(target, part):
            raise ValueError(f"unknown config key {dotted!r}")
        target = getattr(target, part)
    if not dataclasses.is_dataclass(target) or leaf not in {
        f.name for f in dataclasses.fields(target)
    }:
        raise ValueError(f"unknown config key {dotted!r}")
    hint = typing.get_type_hints(type(target))[leaf]
    setattr(target, leaf, _coerce(value, hint))


def load_config(path: str | None, overrides: list[str]) -> TrainConfig:
    """A config from a JSON file (or defaults), with ``key=value`` overrides, validated."""
    data = json.loads(Path(path).read_text()) if path else {}
    config: TrainConfig = _build(TrainConfig, data)
    for item in overrides:
        key, sep, value = item.removeprefix("--").partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form --key=value")
        apply_override(config, key, value)
    return config.validate()
