"""Face embedding: aligned crops to L2-normalised vectors with an ONNX recognizer."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from service.models import Manifest
from service.vision.runtime import Device, create_session, providers_in_use


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length so that inner product is cosine similarity."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


class Embedder:
    """An ONNX recognizer fed exactly as its manifest says (size, colour order, mean/std)."""

    def __init__(
        self,
        manifest: Manifest,
        weights: Path,
        *,
        device: Device = "auto",
        intra_op_threads: int = 0,
        max_batch: int = 64,
        flip_tta: bool = False,
    ) -> None:
        if manifest.embedding_dim is None or manifest.alignment_template is None:
            raise ValueError(f"{manifest.name} is not a recognition model")
        self.manifest = manifest
        self.embedding_dim = manifest.embedding_dim
        self.template = np.asarray(manifest.alignment_template, dtype=np.float64)
        self.input_size = (manifest.input.width or 112, manifest.input.height or 112)
        self.max_batch = max_batch
        self.flip_tta = flip_tta
        self.session = create_session(weights, device=device, intra_op_threads=intra_op_threads)
        self._input_name = self.session.get_inputs()[0].name
        batch_dim = self.session.get_inputs()[0].shape[0]
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        self._mean = np.asarray(manifest.input.mean, dtype=np.float32)
        self._std = np.asarray(manifest.input.std, dtype=np.float32)

    @property
    def model_id(self) -> str:
        """The id galleries are pinned to."""
        return self.manifest.model_id

    @property
    def providers(self) -> list[str]:
        """Execution providers in use."""
        return providers_in_use(self.session)

    def embed(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Embed aligned RGB uint8 crops (N, H, W, 3); returns (N, D) unit vectors.

        With flip test-time augmentation the embedding is normalise(f(x) + f(flip(x))).
        """
        return self.embed_with_norms(crops)[0]

    def embed_with_norms(
        self, crops: np.ndarray | list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) unit vectors and (N,) feature norms before normalisation (of the unflipped
        crop: what the face quality and validity are measured on)."""
        batch = self.prepare(crops)
        if len(batch) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32), np.zeros(0, np.float32)
        feats = self._run(batch)
        norms = np.linalg.norm(feats, axis=1).astype(np.float32)
        if self.flip_tta:
            feats = feats + self._run(batch[:, :, :, ::-1])
        return l2_normalise(feats), norms

    def embed_packed(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """(N, D + 1): unit vectors with their norm appended, one array for the micro-batcher."""
        vectors, norms = self.embed_with_norms(crops)
        return np.hstack([vectors, norms[:, None]])

    def prepare(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Resize any off-size crop and build the normalised NCHW tensor (also what int8
        calibration feeds: ``service.quantize``)."""
        w, h = self.input_size
        sized = [
            c if c.shape[:2] == (h, w) else cv2.resize(c, (w, h), interpolation=cv2.INTER_AREA)
            for c in crops
        ]
        if not sized:
            return np.zeros((0, 3, h, w), dtype=np.float32)
        x = np.stack(sized).astype(np.float32)  # (N, H, W, 3) RGB
        if self.manifest.input.color_order == "BGR":
            x = x[..., ::-1]
        x = (x - self._mean) / self._std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run in chunks no larger than max_batch (or the graph's fixed batch)."""
        step = self._fixed_batch or self.max_batch
        outs = []
        for start in range(0, len(batch), step):
            chunk = np.ascontiguousarray(batch[start : start + step])
            outs.append(self.session.run(None, {self._input_name: chunk})[0])
        return np.concatenate(outs, axis=0).reshape(len(batch), -1).astype(np.float32)
