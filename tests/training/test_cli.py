"""``marginface train`` / ``python -m training.train`` as a newcomer meets it (issue 32)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def run(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"{prelude}import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_train_help_prints_help_and_train_is_listed() -> None:
    """On main: "config error: override '--help' is not of the form --key=value", and `train`
    was missing from `marginface --help`'s command list."""
    proc = run("train", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "config error" not in proc.stderr
    for text in ("prepare", "export", "--data.root", "--head.preset", "--data.val_pair_limit"):
        assert text in proc.stdout
    listing = run("--help")
    assert listing.returncode == 0 and "train" in listing.stdout.split("positional")[1]


def test_train_without_the_train_extra_says_so() -> None:
    """Without torch (the train extra) `marginface train` was a traceback."""
    hide = "import sys; sys.modules['torch'] = None; "  # as if torch were not installed
    code = f"{hide}from training.train import main; sys.exit(main(['--data.root=x']))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "train extra" in proc.stderr and "pip install" in proc.stderr


@pytest.mark.slow
def test_export_prints_its_parity_figure_and_no_exporter_noise(
    aligned_subset: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`export` printed torch's exporter progress lines and not the parity it checked: stdout
    is now one JSON object with the parity figure, also in the manifest and the model card."""
    from training.config import load_config
    from training.engine import train
    from training.train import main

    run_dir = tmp_path / "run"
    train(
        load_config(
            None,
            [
                f"--data.root={aligned_subset}",
                f"--output_dir={run_dir}",
                "--batch_size=8",
                "--data.workers=0",
                "--max_steps=1",
                "--model.embedding_dim=64",
            ],
        )
    )
    capfd.readouterr()
    person = next(p for p in aligned_subset.iterdir() if p.is_dir())
    models = tmp_path / "models"
    code = main(
        ["export", str(run_dir), "--name", "tiny", "--models-dir", str(models),
         "--parity-images", str(person)]
    )  # fmt: skip
    out = capfd.readouterr().out
    assert code == 0
    lines = [x for x in out.splitlines() if x.strip()]
    assert len(lines) == 1, out  # exactly the JSON summary
    summary = json.loads(lines[0])
    assert summary["parity_min_cosine"] >= 0.9999 and summary["parity_faces"] >= 1
    manifest = json.loads((models / "tiny" / "manifest.json").read_text())
    assert manifest["training"]["parity_faces"] == summary["parity_faces"]
    card = (models / "tiny" / "MODEL_CARD.md").read_text()
    assert f"over {summary['parity_faces']} real aligned faces" in card


def test_progress_lines_are_not_warnings_and_warnings_still_are(
    aligned_subset: Path, tmp_path: Path
) -> None:
    """A trial read "WARNING step 10/400 loss ..." on every normal line (issue 29): progress,
    the head's line and validation results are information; a real warning keeps its word."""
    cmd = [
        sys.executable,
        "-m",
        "training.train",
        f"--data.root={aligned_subset}",
        f"--output_dir={tmp_path / 'run'}",
        "--batch_size=8",
        "--data.workers=0",
        "--optim.warmup_steps=1",
        "--log_every=1",
        "--model.backbone=mobilefacenet",
        "--model.embedding_dim=64",
        "--max_steps=2",
        "--head.preset=cosface",
        "--head.scale=64",  # far above the derived scale at a few classes: a real warning
        "--device=cpu",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    steps = [line for line in lines if "step 2/2" in line]
    assert steps and not steps[0].startswith("WARNING"), steps
    head = [line for line in lines if "cosface head" in line]
    assert head and not head[0].startswith("WARNING"), head
    assert any(line.startswith("WARNING") and "head.scale=64" in line for line in lines), lines
