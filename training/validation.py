"""What training measures besides its loss: LFW verification, open-set identification, and the
angle between training features and their class centres.

Validation crops are aligned once by the service's own pipeline (the same protocol as
``marginface eval``) and cached; embeddings are flip-averaged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from service.bin_dataset import read_bin
from service.evaluation import (
    Pair,
    balanced_pairs,
    identification_report,
    kfold_accuracy,
    open_set_search,
    open_set_split,
    read_lfw_pairs,
    tar_at,
    threshold_at_far,
)
from training.config import TrainConfig
from training.data import IMAGE_SUFFIXES, FaceDataset, Normalisation

ANGLE_BIN_DEG = 2.0  # histogram bins of the angle snapshots


@torch.no_grad()
def embed_crops(
    backbone: nn.Module,
    crops: np.ndarray,
    norm: Normalisation,
    device: torch.device,
    *,
    batch: int = 128,
    flip: bool = True,
) -> np.ndarray:
    """(N, 112, 112, 3) uint8 crops to (N, D) unit embeddings (flip-averaged by default)."""
    was_training = backbone.training
    backbone.eval()
    feats = []
    for start in range(0, len(crops), batch):
        x = torch.stack([norm.apply(c) for c in crops[start : start + batch]]).to(device)
        f = backbone(x)
        if flip:
            f = f + backbone(torch.flip(x, dims=[3]))
        feats.append(torch.nn.functional.normalize(f.float(), dim=1).cpu())
    backbone.train(was_training)
    return torch.cat(feats).numpy() if feats else np.zeros((0, 0), dtype=np.float32)


class Validator:
    """LFW-protocol verification during training, on crops aligned once by the service pipeline."""

    def __init__(self, config: TrainConfig, cache: Path, norm: Normalisation) -> None:
        self.pairs = self.select_pairs(config)
        self.norm = norm
        self.crops, self.index = self._crops(cache)

    @staticmethod
    def select_pairs(config: TrainConfig) -> list[Pair]:
        """The pairs to validate on: all of pairs.txt, or with ``val_pair_limit`` an equal share
        of each fold, half same-person and half different-person pairs (each fold of pairs.txt
        lists its same pairs first, so the first N of a fold would all be same pairs)."""
        pairs = read_lfw_pairs(Path(config.data.val_pairs), Path(config.data.val_images))
        limit = config.data.val_pair_limit
        return balanced_pairs(pairs, limit) if limit else pairs

    def _crops(self, cache: Path) -> tuple[np.ndarray, dict[Path, int]]:
        paths = sorted({p.a for p in self.pairs} | {p.b for p in self.pairs})
        if cache.is_file():
            data = np.load(cache, allow_pickle=False)
            cached = [Path(p) for p in data["paths"]]
            if set(paths) <= set(cached):  # a cache of all pairs serves any subset
                return data["crops"], {p: i for i, p in enumerate(cached)}
        from service.calibration import central_face
        from service.recognition import build_pipeline
        from service.settings import Settings
        from service.vision.image import decode_image

        pipeline = build_pipeline(Settings(device="cpu"), batching=False)
        crops = np.zeros((len(paths), 112, 112, 3), dtype=np.uint8)
        for i, path in enumerate(paths):
            image = decode_image(path.read_bytes())
            face, _ = central_face(pipeline, image)  # the same protocol as `marginface eval`
            if face is not None:
                crops[i] = pipeline.align(image, face.landmarks)
            else:  # documented fallback: the central 112x112 region, resized
                h, w = image.shape[:2]
                side = min(h, w) // 2
                crop = image[
                    h // 2 - side // 2 : h // 2 + side // 2, w // 2 - side // 2 : w // 2 + side // 2
                ]
                crops[i] = cv2.resize(crop, (112, 112), interpolation=cv2.INTER_AREA)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, crops=crops, paths=np.array([str(p) for p in paths]))
        return crops, {p: i for i, p in enumerate(paths)}

    def evaluate(self, backbone: nn.Module, device: torch.device) -> dict[str, float]:
        """10-fold accuracy and TAR at FAR 1e-2 (flip-averaged embeddings)."""
        emb = embed_crops(backbone, self.crops, self.norm, device)
        scores = np.array([float(emb[self.index[p.a]] @ emb[self.index[p.b]]) for p in self.pairs])
        same = np.array([p.same for p in self.pairs])
        folds = np.array([p.fold for p in self.pairs])
        mean, std, _ = kfold_accuracy(scores, same, folds)
        out = {"lfw_accuracy": mean, "lfw_accuracy_std": std, "lfw_pairs": float(len(scores))}
        impostors = scores[~same]
        if len(impostors) >= 100:
            out["lfw_tar_at_far_1e-2"] = tar_at(scores[same], threshold_at_far(impostors, 1e-2))
        return out


class BinValidator:
    """Verification on an insightface .bin (lfw.bin, cfp_fp.bin, agedb_30.bin, ...), as
    arcface_torch validates: its aligned crops, flip-averaged embeddings, 10 contiguous folds.
    The crops are decoded once; the file is read by the service's reader (``eval bin``'s)."""

    def __init__(self, path: Path, norm: Normalisation) -> None:
        data = read_bin(path)
        self.name = path.stem
        self.crops = data.decode()  # (2N, 112, 112, 3)
        self.same = np.array(data.issame)
        self.folds = data.folds()
        self.norm = norm

    def evaluate(self, backbone: nn.Module, device: torch.device) -> dict[str, float]:
        """``<name>_accuracy`` (10-fold), its std, and TAR at FAR 1e-2 when the pairs allow."""
        emb = embed_crops(backbone, self.crops, self.norm, device)
        scores = np.einsum("ij,ij->i", emb[0::2], emb[1::2])
        mean, std, _ = kfold_accuracy(scores, self.same, self.folds)
        out = {
            f"{self.name}_accuracy": mean,
            f"{self.name}_accuracy_std": std,
            f"{self.name}_pairs": float(len(scores)),
        }
        impostors = scores[~self.same]
        if len(impostors) >= 100:
            threshold = threshold_at_far(impostors, 1e-2)
            out[f"{self.name}_tar_at_far_1e-2"] = tar_at(scores[self.same], threshold)
        return out


class OpenSetValidator:
    """Open-set identification on aligned crops (a folder per person, e.g. Glint-24): the first
    people are enrolled, the others are strangers; DIR at FPIR is what margins exist for."""

    def __init__(self, config: TrainConfig, norm: Normalisation) -> None:
        root = Path(config.data.openset_images)
        people = {
            d.name: sorted(
                (p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                key=lambda p: (len(p.stem), p.stem),
            )
            for d in sorted(root.iterdir())
            if d.is_dir()
        }
        self.gallery, self.probes = open_set_split(
            people,
            enrolled=config.data.openset_enrolled,
            gallery_photos=config.data.openset_gallery_photos,
            probes_per_person=config.data.openset_probes_per_person,
        )
        self.norm = norm

    @staticmethod
    def _load(paths: list[Path]) -> np.ndarray:
        return np.stack(
            [np.asarray(Image.open(p).convert("RGB").resize((112, 112))) for p in paths]
        )

    def evaluate(self, backbone: nn.Module, device: torch.device) -> dict[str, object]:
        """Rank-1 and DIR at FPIR 1e-1 and 1e-2."""
        gallery = {
            name: embed_crops(backbone, self._load(paths), self.norm, device)
            for name, paths in self.gallery.items()
        }
        probe_emb = embed_crops(
            backbone, self._load([p for _, p in self.probes]), self.norm, device
        )
        probes = [(name, probe_emb[i]) for i, (name, _) in enumerate(self.probes)]
        report = identification_report(*open_set_search(gallery, probes))
        dirs = report["dir_at_fpir"]
        assert isinstance(dirs, dict)
        return {
            "openset_rank1": report["rank1"],
            "openset_dir_at_fpir_1e-1": dirs["1e-01"].get("dir"),
            "openset_dir_at_fpir_1e-2": dirs["1e-02"].get("dir"),
            "openset_probes": len(probes),
        }


class AngleMonitor:
    """Histograms of θ between training features and their class centres (the ArcFace paper's
    figure), on a fixed, unaugmented subset of the training set."""

    def __init__(self, dataset: FaceDataset, samples: int, path: Path) -> None:
        step = max(1, len(dataset) // max(1, samples))
        self.indices = list(range(0, len(dataset), step))[:samples]
        self.crops = np.stack([dataset.image(i) for i in self.indices])
        self.labels = np.array([dataset.labels[i] for i in self.indices])
        self.norm = dataset.norm
        self.path = path

    def snapshot(
        self, step: int, backbone: nn.Module, weight: torch.Tensor, device: torch.device
    ) -> dict[str, object]:
        """Append one histogram (degrees) at ``step``; returns it."""
        emb = embed_crops(backbone, self.crops, self.norm, device, flip=False)
        centres = torch.nn.functional.normalize(weight.detach().float().cpu(), dim=1).numpy()
        cos = np.clip((emb * centres[self.labels]).sum(axis=1), -1.0, 1.0)
        degrees = np.degrees(np.arccos(cos))
        bins = np.arange(0.0, 180.0 + ANGLE_BIN_DEG, ANGLE_BIN_DEG)
        counts, _ = np.histogram(degrees, bins=bins)
        row: dict[str, object] = {
            "step": step,
            "mean_deg": float(degrees.mean()),
            "median_deg": float(np.median(degrees)),
            "bin_deg": ANGLE_BIN_DEG,
            "counts": counts.tolist(),
        }
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        return row


def snapshot_steps(max_steps: int, snapshots: int) -> set[int]:
    """``snapshots`` evenly spaced steps from 0 to max_steps inclusive."""
    if snapshots <= 0:
        return set()
    if snapshots == 1:
        return {max_steps}
    return {round(i * max_steps / (snapshots - 1)) for i in range(snapshots)}


def degrees(cos: torch.Tensor) -> torch.Tensor:
    """Angles in degrees from cosines."""
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def past_fallback_fraction(target_cos: torch.Tensor, m2_rad: float) -> float:
    """Fraction of target angles past π − m2, where ArcFace's cos(θ + m2) stops decreasing."""
    if m2_rad <= 0:
        return 0.0
    return float((target_cos < math.cos(math.pi - m2_rad)).float().mean())
