"""Training configuration as typed dataclasses; a run's config is saved beside its checkpoints.

Load from JSON and override with dotted keys: ``--head.preset=cosface --optim.lr=0.05``. Every
combination is checked when the config loads, not at step 10,000.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from training import tensorboard_log
from training.losses import (
    PRESET_SCHEDULES,
    PRESETS,
    PUBLISHED_SCALE_MIN_CLASSES,
    MarginConfig,
    MarginSchedule,
    derived_scale,
)

log = logging.getLogger(__name__)
#: a set scale more than this many times the derived one is warned about at load
SCALE_WARN_FACTOR = 2.0


@dataclass
class DataConfig:
    """Where the aligned training faces are."""

    root: str = ""  # an aligned image folder (one sub-folder per identity)
    rec: str = ""  # or an insightface RecordIO file (.rec with its .idx)
    val_images: str = ""  # LFW-layout image root for verification during training
    val_pairs: str = ""  # pairs.txt
    val_pair_limit: int = 0  # 0: all pairs; else this many, half same and half different
    val_cache: str = ""  # where the aligned validation crops are cached (default: the run dir)
    # insightface verification .bin files, comma-separated (lfw.bin,cfp_fp.bin,agedb_30.bin):
    # validated at eval_every and at the end, logged as <stem>_accuracy (lfw_accuracy, ...)
    val_bins: str = ""
    openset_images: str = ""  # aligned crops, a folder per person (Glint-24): DIR at FPIR at end
    openset_enrolled: int = 12  # the first N people are enrolled, the others are strangers
    openset_gallery_photos: int = 5
    openset_probes_per_person: int = 20
    max_identities: int = 0  # train on the first N identity folders only (0: all)
    workers: int = 2
    flip: bool = True

    def bin_paths(self) -> list[Path]:
        """The verification .bin files of ``val_bins``."""
        return [Path(p.strip()) for p in self.val_bins.split(",") if p.strip()]


@dataclass
class ModelConfig:
    """The backbone."""

    backbone: str = "mobilefacenet"
    embedding_dim: int = 128
    width: int = 0  # channels of the first stage; 0: the backbone's default
    init: str = ""  # start from a registered ONNX recognizer (e.g. sface-2021dec) instead
    models_dir: str = "models"  # the registry ``init`` is looked up in
    # the backbone (weights and batch-norm statistics) is held fixed for the first N steps while
    # the new head finds its class centres, then trained with it (linear probing, then
    # fine-tuning: Kumar et al., ICLR 2022): a random head's first gradients otherwise reach a
    # pretrained backbone (docs/loss_study.md, fine-tuning)
    freeze_steps: int = 0

    def kwargs(self) -> dict[str, int]:
        """Keyword arguments for create_backbone."""
        return {"width": self.width} if self.width else {}


@dataclass
class HeadConfig:
    """The margin head (a preset, optionally with explicit margins) and Partial FC."""

    preset: str = "arcface"
    # None: s = 64 (the published recipe) from 10,000 classes up, derived from the class count
    # below (training.losses.default_scale)
    scale: float | None = None
    adaptive_scale: bool = False  # AdaCos's dynamic scale, updated every step
    m1: int | None = None
    m2_rad: float | None = None
    m3: float | None = None
    bias: bool | None = None  # softmax baseline only: False drops its bias
    arcface_fallback: bool = True  # False only for the ablation (ψ no longer monotonic)
    margin_warmup_steps: int = 0  # m2 and m3 rise linearly from 0 over these steps
    lambda_base: float | None = None  # SphereFace λ annealing (None: the preset's; 0: off)
    lambda_gamma: float = 0.12
    lambda_power: float = 1.0
    lambda_min: float = 5.0
    sample_rate: float = 1.0  # Partial FC: fraction of class centres per step

    def margin(self, num_classes: int | None = None) -> MarginConfig:
        """The validated margin config (preset with overrides); with ``num_classes`` an unset
        scale is derived from it."""
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
                "bias": self.bias,
            }.items()
            if v is not None
        }
        overrides["arcface_fallback"] = self.arcface_fallback
        config = dataclasses.replace(base, **overrides).validate()
        return config.resolved(num_classes) if num_classes is not None else config

    def schedule(self) -> MarginSchedule:
        """The margin schedule: the preset's (SphereFace anneals λ) with overrides."""
        base = PRESET_SCHEDULES.get(self.preset, MarginSchedule())
        return dataclasses.replace(
            base,
            warmup_steps=self.margin_warmup_steps,
            lambda_base=base.lambda_base if self.lambda_base is None else self.lambda_base,
            lambda_gamma=self.lambda_gamma,
            lambda_power=self.lambda_power,
            lambda_min=self.lambda_min,
        ).validate()


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
    batch_size: int = 64  # per rank and per micro-batch
    # gradient accumulation: micro-batches per optimizer step (the batch an optimizer step sees
    # is batch_size x accumulate x ranks); max_steps, the lr schedule, logging and checkpoints
    # count optimizer steps. Batch norm still normalises over each micro-batch of batch_size.
    accumulate: int = 1
    max_steps: int = 1000
    # auto: bf16 on CUDA, fp32 on the CPU; bf16: bf16 autocast on either; fp16: CUDA only
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 20
    # TensorBoard event files in output_dir/tensorboard beside log.jsonl (scalars, target-angle
    # histograms); needs the tensorboard package (train extra)
    tensorboard: bool = False
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 500
    angle_snapshots: int = 0  # histograms of the target angle at this many evenly spaced steps
    angle_samples: int = 1024  # training faces those histograms are measured on
    seed: int = 0

    def validate(self) -> TrainConfig:
        """Check combinations; raises ValueError naming the bad key. Warns when a set scale is
        far above the one derived from the class count (the softmax saturates from step 0)."""
        margin = self.head.margin()
        self.head.schedule()
        if self.head.adaptive_scale and margin.kind == "softmax":
            raise ValueError("head.adaptive_scale (AdaCos) needs a normalised head, not softmax")
        if self.data.val_pair_limit and (
            self.data.val_pair_limit < 20 or self.data.val_pair_limit % 20
        ):
            raise ValueError(
                "data.val_pair_limit must be a multiple of 20 (10 folds, half same and half "
                f"different pairs), got {self.data.val_pair_limit}"
            )
        for path in self.data.bin_paths():
            if path.suffix != ".bin":
                raise ValueError(f"data.val_bins: {path} is not a .bin file")
            if path.stem == "lfw" and self.data.val_pairs:
                raise ValueError(
                    "data.val_bins has an lfw.bin and data.val_pairs is set: both would log "
                    "lfw_accuracy; use one of them"
                )
        classes = self.class_count()
        if (
            classes
            and classes < PUBLISHED_SCALE_MIN_CLASSES  # at 10k+ classes s = 64 is the recipe
            and margin.kind != "softmax"
            and self.head.scale is not None
        ):
            derived = derived_scale(classes, margin)
            if self.head.scale > SCALE_WARN_FACTOR * derived:
                log.warning(
                    "head.scale=%g is far above the scale derived for %d classes (%.1f: AdaCos's "
                    "√2·ln(C−1) over ψ(0)); the softmax saturates from the first step and margin "
                    "heads may not train. Leave head.scale unset to use the derived one.",
                    self.head.scale,
                    classes,
                    derived,
                )
        if bool(self.data.root) == bool(self.data.rec):
            raise ValueError("set exactly one of data.root (aligned folder) or data.rec (RecordIO)")
        if not 0.0 < self.head.sample_rate <= 1.0:
            raise ValueError(f"head.sample_rate must be in (0, 1], got {self.head.sample_rate}")
        if self.batch_size < 2 or self.max_steps < 1:
            raise ValueError("batch_size must be >= 2 and max_steps >= 1")
        if self.accumulate < 1:
            raise ValueError(
                f"accumulate (micro-batches per step) must be >= 1, got {self.accumulate}"
            )
        if self.tensorboard and not tensorboard_log.available():
            raise ValueError(tensorboard_log.MISSING)
        if self.amp == "fp16" and self.device == "cpu":
            raise ValueError("amp=fp16 needs CUDA (loss scaling); use amp=bf16 or off on the CPU")
        if self.optim.lr <= 0:
            raise ValueError("optim.lr must be positive")
        if self.model.freeze_steps < 0:
            raise ValueError("model.freeze_steps must be >= 0")
        if self.head.preset == "softmax" and self.head.sample_rate < 1.0:
            raise ValueError("Partial FC needs a normalised head; the softmax baseline has a bias")
        if self.model.init and (self.model.width or self.model.backbone != "mobilefacenet"):
            log.info("model.init=%s: backbone and width come from that model", self.model.init)
        return self

    def class_count(self) -> int | None:
        """Identities in an aligned-folder training set (cheap: counts folders); None for
        RecordIO or a folder that does not exist yet."""
        root = Path(self.data.root) if self.data.root else None
        if root is None or not root.is_dir():
            return None
        count = sum(1 for d in root.iterdir() if d.is_dir())
        if self.data.max_identities:
            count = min(count, self.data.max_identities)
        return count or None

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return asdict(self)

    def save(self, path: Path) -> None:
        """Write as JSON (beside the checkpoints)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def describe_keys(config: Any = None, prefix: str = "") -> list[str]:
    """Every settable key as ``--a.b=DEFAULT  (type)``: the help of ``marginface train``."""
    config = TrainConfig() if config is None else config
    lines = []
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            lines += describe_keys(value, f"{prefix}{f.name}.")
            continue
        hint = hints[f.name]
        kind = (
            "|".join(map(str, typing.get_args(hint)))
            if typing.get_origin(hint) is Literal
            else getattr(hint, "__name__", str(hint).replace("typing.", ""))
        )
        lines.append(f"--{prefix}{f.name}={value!s}  ({kind})")
    return lines


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
