"""The training loop: real faces, exact resume, NaN guard, 2-process DDP, export and serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from tests.conftest import API_KEY, DATA, ROOT, lfw, make_settings
from training.config import load_config
from training.engine import train
from training.export import export_run

pytestmark = pytest.mark.slow

BASE = [
    "--batch_size=8",
    "--data.workers=0",
    "--optim.warmup_steps=2",
    "--log_every=1",
    "--model.backbone=mobilefacenet",
    "--model.embedding_dim=64",
]


def run_config(root: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_config(None, [f"--data.root={root}", f"--output_dir={out}", *BASE, *extra])


def test_short_run_logs_curves_and_config(aligned_subset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    lfw_root = DATA / "lfw"
    metrics = train(
        run_config(
            aligned_subset,
            out,
            "--max_steps=4",
            "--head.preset=arcface",
            "--eval_every=2",
            f"--data.val_images={lfw_root / 'images'}",
            f"--data.val_pairs={lfw_root / 'pairs.txt'}",
            "--data.val_pair_limit=20",
        )
    )
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in lines if "lfw_accuracy" in r]
    assert [r["step"] for r in evals] == [2, 4]  # LFW protocol during training, every 2 steps
    assert all(0.0 <= r["lfw_accuracy"] <= 1.0 for r in evals)
    rows = [r for r in lines if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(
        {"loss", "accuracy", "plain_accuracy", "lr", "samples_per_s"} <= set(r) for r in rows
    )
    # a margin head's accuracy on its margin logits never exceeds its plain accuracy
    assert all(r["accuracy"] <= r["plain_accuracy"] for r in rows)
    assert all(0.0 <= r["past_arcface_fallback"] <= 1.0 for r in rows)
    assert all(r["lfw_pairs"] == 20 for r in evals)
    assert (out / "curves.png").is_file() and (out / "config.json").is_file()
    assert metrics["step"] == 4
    saved = load_config(str(out / "config.json"), [])
    assert saved.head.preset == "arcface" and saved.max_steps == 4


def test_amp_bf16_trains_on_the_cpu(aligned_subset: Path, tmp_path: Path) -> None:
    """amp=bf16 on the CPU runs the steps under bf16 autocast (it was silently fp32)."""
    out = tmp_path / "bf16"
    train(run_config(aligned_subset, out, "--max_steps=2", "--amp=bf16", "--device=cpu"))
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["amp"] for r in rows] == ["bfloat16", "bfloat16"]
    assert rows[0]["eta_s"] > 0 and rows[-1]["eta_s"] == 0  # progress: the time left
    assert all(np.isfinite(r["loss"]) for r in rows)


def _bin_from_aligned(root: Path, out: Path, pairs: int) -> None:
    """A verification .bin of real crops aligned by the service pipeline: same-person pairs
    within an identity folder, different-person pairs across two."""
    from service.bin_dataset import write_bin

    people = [sorted(d.iterdir()) for d in sorted(root.iterdir()) if d.is_dir()]
    crops, issame = [], []
    for i in range(pairs):
        a = people[i % len(people)]
        b = a if i % 2 == 0 else people[(i + 1) % len(people)]
        first, second = a[i % len(a)], b[(i + 3) % len(b)]
        crops += [np.asarray(Image.open(p).convert("RGB")) for p in (first, second)]
        issame.append(i % 2 == 0)
    write_bin(out, crops, issame)


def test_validates_on_a_list_of_bin_files(aligned_subset: Path, tmp_path: Path) -> None:
    """data.val_bins: every .bin is scored at eval_every and at the end (10 contiguous folds,
    flip-averaged), logged as <stem>_accuracy beside the training rows and in the curves."""
    _bin_from_aligned(aligned_subset, tmp_path / "celeba_a.bin", 20)
    _bin_from_aligned(aligned_subset, tmp_path / "celeba_b.bin", 40)
    out = tmp_path / "run"
    bins = f"{tmp_path / 'celeba_a.bin'},{tmp_path / 'celeba_b.bin'}"
    metrics = train(
        run_config(
            aligned_subset, out, "--max_steps=2", "--eval_every=1", f"--data.val_bins={bins}"
        )
    )
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "celeba_a_accuracy" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert all(r["celeba_a_pairs"] == 20 and r["celeba_b_pairs"] == 40 for r in evals)
    assert all(0.0 <= r["celeba_b_accuracy"] <= 1.0 for r in evals)
    assert metrics["celeba_b_accuracy"] == evals[-1]["celeba_b_accuracy"]
    with pytest.raises(ValueError, match=r"not a \.bin"):
        run_config(aligned_subset, out, f"--data.val_bins={tmp_path / 'x.txt'}")


class _Crash(Exception):
    pass


def _train_and_crash_after(config, steps: int) -> None:  # type: ignore[no-untyped-def]
    """Run the real loop but die inside step ``steps + 1``, after step ``steps``'s checkpoint."""
    original = torch.optim.lr_scheduler.LambdaLR.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1  # call 1 is the constructor's
        if calls["n"] > steps + 1:
            raise _Crash
        original(self, *args, **kwargs)

    torch.optim.lr_scheduler.LambdaLR.step = step  # type: ignore[method-assign]
    try:
        with pytest.raises(_Crash):
            train(config)
    finally:
        torch.optim.lr_scheduler.LambdaLR.step = original  # type: ignore[method-assign]


def test_resume_continues_bit_for_bit(aligned_subset: Path, tmp_path: Path) -> None:
    extra = (
        "--max_steps=4",
        "--head.preset=cosface",
        "--checkpoint_every=2",
        "--head.sample_rate=0.5",
        "--head.margin_warmup_steps=3",  # the schedule resumes at its step
        "--head.adaptive_scale=true",  # and AdaCos's scale with the head's state
    )
    train(run_config(aligned_subset, tmp_path / "a", *extra))
    _train_and_crash_after(run_config(aligned_subset, tmp_path / "b", *extra), steps=2)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 2
    train(run_config(aligned_subset, tmp_path / "b", *extra))
    sa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    sb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert sa["step"] == sb["step"] == 4
    for key, value in sa["backbone"].items():
        torch.testing.assert_close(sb["backbone"][key], value, rtol=0, atol=0, msg=key)
    torch.testing.assert_close(sb["head"]["head.weight"], sa["head"]["head.weight"], rtol=0, atol=0)
    assert float(sb["head"]["head.scale"]) == float(sa["head"]["head.scale"])
    assert int(sb["head"]["head.step"]) == int(sa["head"]["head.step"]) == 3


def test_resume_at_the_last_step_of_an_epoch_is_exact(aligned_subset: Path, tmp_path: Path) -> None:
    """A checkpoint written at the end of an epoch resumes with the next epoch, not by
    replaying the finished one (on main the weights differed by 1e-4 and BN statistics by 30)."""
    from training.data import image_folder

    per_epoch = len(image_folder(aligned_subset, max_identities=2)) // 8  # batch 8, drop_last
    extra = (
        "--data.max_identities=2",
        f"--max_steps={per_epoch + 2}",
        f"--checkpoint_every={per_epoch}",
        "--head.preset=cosface",
    )
    train(run_config(aligned_subset, tmp_path / "a", *extra))
    _train_and_crash_after(run_config(aligned_subset, tmp_path / "b", *extra), steps=per_epoch)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == per_epoch
    train(run_config(aligned_subset, tmp_path / "b", *extra))
    sa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    sb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert sa["step"] == sb["step"] == per_epoch + 2 and sa["epoch"] == sb["epoch"] == 1
    for key, value in sa["backbone"].items():
        torch.testing.assert_close(sb["backbone"][key], value, rtol=0, atol=0, msg=key)
    torch.testing.assert_close(sb["head"]["head.weight"], sa["head"]["head.weight"], rtol=0, atol=0)


def test_nan_guard_stops_with_a_clear_message(aligned_subset: Path, tmp_path: Path) -> None:
    config = run_config(
        aligned_subset,
        tmp_path / "nan",
        "--max_steps=6",
        "--optim.lr=1e30",
        "--optim.warmup_steps=1",
        "--optim.grad_clip=1e30",
        "--head.preset=cosface",
    )
    with pytest.raises(RuntimeError, match=r"lower optim\.lr"):
        train(config)


def test_two_process_gloo_ddp_with_partial_fc(aligned_subset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        "--master_port=29517",
        "-m",
        "training.train",
        f"--data.root={aligned_subset}",
        f"--output_dir={out}",
        *BASE,
        "--max_steps=3",
        "--head.preset=arcface",
        "--head.sample_rate=0.5",
        "--device=cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoint.rank0.pt").is_file() and (out / "checkpoint.rank1.pt").is_file()
    shard0 = torch.load(out / "checkpoint.rank0.pt", weights_only=False)["head"]["head.weight"]
    shard1 = torch.load(out / "checkpoint.rank1.pt", weights_only=False)["head"]["head.weight"]
    assert shard0.shape[0] + shard1.shape[0] == 8  # class centres sharded across the ranks
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3


@pytest.mark.parametrize("accumulate", [1, 2])
def test_ranks_hold_identical_backbones_with_clipping_and_partial_fc(
    aligned_subset: Path, tmp_path: Path, accumulate: int
) -> None:
    """Gradient clipping with Partial FC: each rank holds its own shard of class centres, so a
    norm over "this rank's parameters" differs per rank; the clip must use one global norm, or
    the backbones drift apart (on main 93 of 94 tensors differed after 4 steps). With gradient
    accumulation DDP skips its all-reduce on the first micro-batch (no_sync) and clips once
    per optimizer step: the ranks still agree."""
    out = tmp_path / "ddp-clip"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={29600 + os.getpid() % 300}",
        "-m",
        "training.train",
        f"--data.root={aligned_subset}",
        f"--output_dir={out}",
        *BASE,
        "--max_steps=4",
        "--head.preset=arcface",
        "--head.sample_rate=0.5",
        "--optim.grad_clip=0.05",  # far below the gradients' norm: every step is clipped
        f"--accumulate={accumulate}",
        "--device=cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = [
        torch.load(out / f"checkpoint.rank{r}.pt", weights_only=False)["backbone"] for r in (0, 1)
    ]
    config = load_config(str(out / "config.json"), [])
    from training.pretrained import backbone_for

    names = [name for name, _ in backbone_for(config.model)[0].named_parameters()]
    differing = [n for n in names if not torch.equal(states[0][n], states[1][n])]
    assert not differing, f"{len(differing)} of {len(names)} backbone tensors differ across ranks"
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["grad_norm"] > 0.05  # clipping was on: the norm before the clip is logged


def test_train_export_serve_verify(aligned_subset: Path, tmp_path: Path) -> None:
    """Train a tiny model on real faces, export it, serve it, enroll and verify through the API."""
    run = tmp_path / "run"
    train(run_config(aligned_subset, run, "--max_steps=3", "--head.preset=arcface"))
    models = tmp_path / "models"
    for default in ("retinaface-mnet025",):  # the detector comes from the registry as usual
        (models / default).mkdir(parents=True)
        for f in (ROOT / "models" / default).iterdir():
            (models / default / f.name).symlink_to(f)
    person = next(p for p in aligned_subset.iterdir() if p.is_dir())
    manifest = export_run(
        run,
        models,
        "tiny-arcface",
        parity_images=person,
        data_licence="CelebA: non-commercial research only",
    )
    assert manifest.training is not None and manifest.training["parity_min_cosine"] >= 0.9999
    assert manifest.training["exporter"] == "dynamo"  # torch's current exporter, not the legacy one
    card = (models / "tiny-arcface" / "MODEL_CARD.md").read_text()
    assert "non-commercial" in card and manifest.model_id in card
    settings = make_settings(tmp_path, models_dir=models, embedder={"model": "tiny-arcface"})
    with TestClient(create_app(settings), headers={"X-API-Key": API_KEY}) as c:
        ready = c.get("/readyz").json()
        assert ready["recognizer"]["model_id"] == manifest.model_id
        assert ready["recognizer"]["embedding_dim"] == 64
        c.post("/v1/subjects", json={"id": "p", "name": "P"})
        photo = lfw("Colin_Powell", 1)
        r = c.post(
            "/v1/subjects/p/faces",
            files=[("files", (photo.name, photo.read_bytes(), "image/jpeg"))],
        )
        assert r.status_code == 201, r.text
        r = c.post(
            "/v1/verify",
            files={"image_a": (photo.name, photo.read_bytes(), "image/jpeg")},
            data={"subject_id": "p"},
        )
        assert r.status_code == 200 and r.json()["score"] == pytest.approx(1.0, abs=1e-4)
        assert r.json()["model_id"] == manifest.model_id


def test_two_nodes_one_process_each_through_the_nnodes_path(
    aligned_subset: Path, tmp_path: Path
) -> None:
    """torchrun --nnodes=2 as two separate launches (node 0 and node 1) on one machine, with
    static rendezvous on node 0's address: what docs/scaling.md runs across real nodes."""
    out = tmp_path / "multinode"
    port = 29000 + os.getpid() % 1000

    def launch(node_rank: int) -> subprocess.Popen[str]:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={node_rank}",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            "-m",
            "training.train",
            f"--data.root={aligned_subset}",
            f"--output_dir={out}",
            *BASE,
            "--max_steps=3",
            "--head.preset=cosface",
            "--head.sample_rate=1.0",
            "--device=cpu",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    nodes = [launch(0), launch(1)]
    outputs = [p.communicate(timeout=600)[0] for p in nodes]
    for p, text in zip(nodes, outputs, strict=True):
        assert p.returncode == 0, text[-3000:]
    shard0 = torch.load(out / "checkpoint.rank0.pt", weights_only=False)["head"]["head.weight"]
    shard1 = torch.load(out / "checkpoint.rank1.pt", weights_only=False)["head"]["head.weight"]
    assert shard0.shape[0] + shard1.shape[0] == 8
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3


def test_fine_tune_sface_export_serve_verify(aligned_subset: Path, tmp_path: Path) -> None:
    """Start from the registry's SFace: imported into torch (parity with ONNX Runtime on real
    aligned faces), two steps with a margin head, exported, served, a pair verified."""
    from training.pretrained import import_recognizer, normalisation_of, parity_with_onnx

    module, sface, weights = import_recognizer(ROOT / "models", "sface-2021dec")
    crops = [
        np.asarray(Image.open(p).convert("RGB"))
        for p in sorted(next(d for d in aligned_subset.iterdir() if d.is_dir()).iterdir())[:8]
    ]
    assert parity_with_onnx(module, weights, crops, normalisation_of(sface)) <= 1e-4
    run = tmp_path / "finetune"
    config = load_config(
        None,
        [
            f"--data.root={aligned_subset}",
            f"--output_dir={run}",
            "--model.init=sface-2021dec",
            f"--model.models_dir={ROOT / 'models'}",
            "--model.embedding_dim=128",
            "--head.preset=cosface",
            "--batch_size=8",
            "--data.workers=0",
            "--max_steps=2",
            "--optim.lr=0.001",
            "--optim.warmup_steps=1",
        ],
    )
    metrics = train(config)
    assert metrics["step"] == 2 and metrics["init"] == sface.model_id
    models = tmp_path / "models"
    (models / "retinaface-mnet025").mkdir(parents=True)
    for f in (ROOT / "models" / "retinaface-mnet025").iterdir():
        (models / "retinaface-mnet025" / f.name).symlink_to(f)
    person = next(p for p in aligned_subset.iterdir() if p.is_dir())
    manifest = export_run(run, models, "sface-ft", parity_images=person, data_licence="CelebA")
    assert manifest.input == sface.input  # fed exactly as the original model
    assert manifest.alignment_template == sface.alignment_template
    settings = make_settings(tmp_path, models_dir=models, embedder={"model": "sface-ft"})
    with TestClient(create_app(settings), headers={"X-API-Key": API_KEY}) as c:
        a, b = lfw("Colin_Powell", 1), lfw("Colin_Powell", 2)
        r = c.post(
            "/v1/verify",
            files={
                "image_a": (a.name, a.read_bytes(), "image/jpeg"),
                "image_b": (b.name, b.read_bytes(), "image/jpeg"),
            },
            data={"threshold": "0.3"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["model_id"] == manifest.model_id
        assert r.json()["match"] is True  # two steps at lr 1e-3 keep SFace's knowledge


def test_freeze_steps_hold_the_backbone_then_train_it(aligned_subset: Path, tmp_path: Path) -> None:
    """``model.freeze_steps``: while frozen, only the head learns (the backbone's weights and
    batch-norm statistics are those it started with); afterwards the backbone trains too."""
    from training.pretrained import backbone_for

    extra = (
        "--max_steps=3",
        "--model.freeze_steps=2",
        "--head.preset=cosface",
        "--checkpoint_every=1",
    )
    config = run_config(aligned_subset, tmp_path / "run", *extra)
    torch.manual_seed(config.seed)
    start = {k: v.clone() for k, v in backbone_for(config.model)[0].state_dict().items()}
    _train_and_crash_after(config, steps=2)
    frozen = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert frozen["step"] == 2
    for key, value in start.items():
        torch.testing.assert_close(frozen["backbone"][key], value, rtol=0, atol=0, msg=key)
    train(run_config(aligned_subset, tmp_path / "run", *extra))
    after = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["backbone"]
    assert any(not torch.equal(after[k], v) for k, v in start.items())


def _batch_norm_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backbones whose batch norms always normalise with their (initial) running statistics:
    a network without batch-statistics effects, for which a batch split into micro-batches
    must train exactly as the whole batch (with live batch norm each micro-batch is
    normalised by its own statistics: the one documented difference)."""
    from training import engine
    from training.pretrained import backbone_for

    def held(config):  # type: ignore[no-untyped-def]
        module, norm, manifest = backbone_for(config)
        for layer in module.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.eval()
                layer.train = lambda mode=True, layer=layer: layer  # type: ignore[method-assign]
        return module, norm, manifest

    monkeypatch.setattr(engine, "backbone_for", held)


@pytest.mark.parametrize("grad_clip", ["1e9", "0.05"])  # never clipped; clipped every step
def test_accumulating_two_micro_batches_trains_as_one_double_batch(
    aligned_subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grad_clip: str
) -> None:
    """accumulate=2 at batch 4 against batch 8 on the same samples: the same loss, gradient
    norm (clipped once per optimizer step, on the summed gradients), learning rate (the
    schedule counts optimizer steps) and weights after 3 steps, through Partial FC."""
    _batch_norm_held(monkeypatch)
    extra = ("--max_steps=3", "--head.preset=arcface", f"--optim.grad_clip={grad_clip}")
    train(run_config(aligned_subset, tmp_path / "whole", *extra))
    train(
        run_config(aligned_subset, tmp_path / "split", *extra, "--batch_size=4", "--accumulate=2")
    )
    rows = {
        run: [json.loads(x) for x in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        for run in ("whole", "split")
    }
    assert [r["step"] for r in rows["split"]] == [1, 2, 3]
    for whole, split in zip(rows["whole"], rows["split"], strict=True):
        assert split["lr"] == whole["lr"]
        assert split["loss"] == pytest.approx(whole["loss"], rel=1e-5)
        assert split["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-4)
        assert split["accuracy"] == pytest.approx(whole["accuracy"], abs=1e-6)
        assert (split["grad_norm"] > float(grad_clip)) == (grad_clip == "0.05")  # clipped?
    states = {
        run: torch.load(tmp_path / run / "checkpoint.pt", weights_only=False)
        for run in ("whole", "split")
    }
    # the same sums in another order: float32 rounding, measured against the whole update
    # (per element, batch-norm biases' gradients are sums with heavy cancellation)
    config = run_config(aligned_subset, tmp_path / "init", *extra)
    torch.manual_seed(config.seed)
    from training import engine

    start = engine.backbone_for(config.model)[0].state_dict()  # the runs' initial weights
    keys = [k for k, v in start.items() if v.is_floating_point()]

    def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([state[k].double().flatten() for k in keys])

    whole, split = flat(states["whole"]["backbone"]), flat(states["split"]["backbone"])
    assert float((split - whole).norm()) < 1e-4 * float((whole - flat(start)).norm())
    torch.testing.assert_close(
        states["split"]["head"]["head.weight"],
        states["whole"]["head"]["head.weight"],
        rtol=1e-4,
        atol=1e-6,
    )


def test_resume_with_accumulation_across_an_epoch_boundary_is_exact(
    aligned_subset: Path, tmp_path: Path
) -> None:
    """With accumulate=2 a step consumes two batches: a resumed run skips 2 x step batches,
    here landing on an optimizer step whose micro-batches straddle two epochs."""
    from training.data import image_folder

    per_epoch = len(image_folder(aligned_subset, max_identities=2)) // 8  # batches of 8
    steps = per_epoch  # two epochs' worth of batches
    crash_at = per_epoch // 2  # 2 x crash_at batches: the epoch's end or one short of it
    extra = (
        "--data.max_identities=2",
        "--accumulate=2",
        f"--max_steps={steps}",
        f"--checkpoint_every={crash_at}",
        "--head.preset=cosface",
    )
    train(run_config(aligned_subset, tmp_path / "a", *extra))
    _train_and_crash_after(run_config(aligned_subset, tmp_path / "b", *extra), steps=crash_at)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == crash_at
    train(run_config(aligned_subset, tmp_path / "b", *extra))
    sa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    sb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert sa["step"] == sb["step"] == steps and sa["epoch"] == sb["epoch"] == 1
    for key, value in sa["backbone"].items():
        torch.testing.assert_close(sb["backbone"][key], value, rtol=0, atol=0, msg=key)
    torch.testing.assert_close(sb["head"]["head.weight"], sa["head"]["head.weight"], rtol=0, atol=0)


def test_tensorboard_logs_scalars_and_target_angle_histograms(
    aligned_subset: Path, tmp_path: Path
) -> None:
    """tensorboard=true: the JSON log's scalars (loss, lr, accuracy, ...) and a histogram of
    the target angles at every log step, and the validation accuracies, as event files."""
    pytest.importorskip("tensorboard", reason="the train extra's tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _bin_from_aligned(aligned_subset, tmp_path / "celeba.bin", 20)
    out = tmp_path / "run"
    train(
        run_config(
            aligned_subset,
            out,
            "--max_steps=2",
            "--tensorboard=true",
            f"--data.val_bins={tmp_path / 'celeba.bin'}",
        )
    )
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    for key in ("loss", "lr", "accuracy", "plain_accuracy", "grad_norm", "samples_per_s"):
        logged = events.Scalars(f"train/{key}")
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in train_rows], rel=1e-6)
    angles = events.Histograms("train/target_angle_deg")
    assert [h.step for h in angles] == [1, 2]
    assert all(h.histogram_value.num == 8 for h in angles)  # one angle per face of the batch
    assert all(0.0 <= h.histogram_value.min <= h.histogram_value.max <= 180.0 for h in angles)
    val = events.Scalars("val/celeba_accuracy")
    assert [e.step for e in val] == [2]
    assert val[0].value == pytest.approx(
        next(r for r in rows if "celeba_accuracy" in r)["celeba_accuracy"]
    )
