"""ONNX Runtime sessions on the device the settings ask for, never a silent fallback.

``cuda`` means CUDA or refuse to start; ``auto`` takes CUDA when ONNX Runtime really runs the model
on it, logs which provider it got, and warns only when a GPU is there but unused; ``cpu`` is CPU
only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from service.errors import ModelError

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def create_session(
    path: Path, *, device: Device = "auto", intra_op_threads: int = 0
) -> ort.InferenceSession:
    """Open an ONNX model on the requested device.

    Raises ModelError when ``device="cuda"`` and the CUDA provider is not available or does not
    take the model (ONNX Runtime would otherwise quietly fall back to the CPU).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise ModelError(
            f"device=cuda but ONNX Runtime offers only {available}; install the gpu extra "
            "(onnxruntime-gpu) and a matching CUDA runtime, or set MARGINFACE_DEVICE=cpu"
        )
    providers = [CUDA, CPU] if device != "cpu" and CUDA in available else [CPU]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own untyped errors
        raise ModelError(f"ONNX Runtime cannot load {path.name}: {exc}") from exc
    in_use = session.get_providers()
    if device == "cuda" and (not in_use or in_use[0] != CUDA):
        raise ModelError(
            f"device=cuda but ONNX Runtime runs {path.name} on {in_use}; the CUDA provider "
            "failed to initialise (check the CUDA and cuDNN libraries)"
        )
    if device == "auto":
        if in_use[0] != CUDA and (CUDA in available or gpu_present()):
            # something is wrong: a GPU that the model does not run on
            log.warning(
                "ONNX Runtime runs %s on %s although %s (device=auto); set "
                "MARGINFACE_DEVICE=cuda to make this an error, or =cpu to silence it",
                path.name,
                in_use[0],
                "it offers CUDA"
                if CUDA in available
                else "an NVIDIA GPU is present (install the gpu extra: onnxruntime-gpu)",
            )
        else:
            log.info("ONNX Runtime runs %s on %s (device=auto)", path.name, in_use[0])
    return session


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU driver loaded (whatever ONNX Runtime offers)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def providers_in_use(session: ort.InferenceSession) -> list[str]:
    """The execution providers a session really runs on, first one preferred."""
    return list(session.get_providers())
