"""TensorBoard event files beside the JSON log (``train.tensorboard=true``), for users who
watch runs the way arcface_torch's users do. Optional: the ``tensorboard`` package comes with
the train extra; the config refuses the option at load when it is missing, so a run never
fails at its first log line. The JSON log stays the record the curves and tests read.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import torch

MISSING = (
    "tensorboard=true needs the tensorboard package (part of the train extra): "
    "pip install 'marginface[train]' or pip install tensorboard"
)


def available() -> bool:
    """Whether torch's SummaryWriter can be imported (it needs the tensorboard package)."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLog:
    """Scalars and target-angle histograms under ``log_dir`` (one run per folder)."""

    def __init__(self, log_dir: Path, *, resume_step: int = 0) -> None:
        """Raises RuntimeError when tensorboard is not installed. A resumed run purges the
        events a crashed run wrote after its checkpoint's step, so no step is drawn twice."""
        if not available():
            raise RuntimeError(MISSING)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=resume_step or None)

    def scalars(self, step: int, values: Mapping[str, object], prefix: str = "") -> None:
        """Every numeric value of a JSON log row as ``prefix + key``."""
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                self.writer.add_scalar(prefix + key, value, step)

    def angles(self, step: int, target_angle_deg: torch.Tensor) -> None:
        """Histogram of the angles (degrees) between the step's features and their centres."""
        self.writer.add_histogram("train/target_angle_deg", target_angle_deg.float().cpu(), step)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["MISSING", "TensorBoardLog", "available"]
