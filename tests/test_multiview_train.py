"""The multi-view model through the shared trainer (issue 15): viewset shards -> adapter ->
multiview_loss, exact resume, CLI, the stage plan. Fixtures: SRN objects in their on-disk
format (tests/viewset_fixtures.py) turned into viewset shards by the viewset stages."""
from __future__ import annotations

import json

import pytest
import torch

import viewset_fixtures as F
from pipelines.params_schema import validate_params
from pipelines.stages.viewsets import run_viewset_graph
from training.multiview import load_multiview_model
from training.multiview_train import (MultiViewTask, ViewsetDataConfig, latest_viewset_model,
                                      parse_multiview_train_config, plan_viewset_training, record_viewset_training,
                                      viewset_batch_tensors)
from training.train import load_config, main as train_main
from training.trainer import Trainer, latest_checkpoint

torch.set_num_threads(1)


def build_viewset_root(root, cars=(0, 1, 2), n=4, size=24):
    """SRN cars -> viewset shards under ``root`` (the ``viewset_manifest`` layout)."""
    src = root.parent / f"{root.name}_src" / "cars_train"
    for i in cars:
        F.write_srn(src / f"car{i}", n=n, size=size, seed=i)
    run_viewset_graph(str(root), validate_params({"profile": "smoke", "viewset_source": {"root": str(src),
                                                                                          "format": "srn"},
                                                  "viewset_shards": {"maxcount": 2}}))
    return root / "viewset_shards" / "manifest.json"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return build_viewset_root(tmp_path_factory.mktemp("mv") / "data")


def _cfgs(**train):
    raw = load_config("multiview_tiny", [f"train.{k}={v}" for k, v in {
        "batch_size": 2, "max_steps": 4, "log_every": 2, "ckpt_every": 1000, "segment_steps": 3,
        "shuffle_buffer": 4, **train}.items()])
    return parse_multiview_train_config(raw)


def test_task_batches_match_the_adapter_and_config(manifest):
    mcfg, _, tcfg, task = _cfgs()
    assert isinstance(task, MultiViewTask) and task.data == ViewsetDataConfig()
    ds = task.dataset_factory(mcfg)(manifest, "train", batch_size=2, shuffle_buffer=0, seed=0, resampled=False)
    images, K, w2c = viewset_batch_tensors(next(iter(ds)))
    assert images.shape == (2, mcfg.num_views, 3, mcfg.resolution, mcfg.resolution)
    assert 0 <= images.min() and images.max() <= 1 and K.shape == (2, 3, 3, 3) and w2c.shape == (2, 3, 4, 4)
    # ViewDiff world: the adapter's cameras are rigid (R orthonormal), K at the config resolution
    R = w2c[..., :3, :3]
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5)
    assert (K[..., 0, 2] < mcfg.resolution).all()
    with pytest.raises(ValueError, match="data.adapter"):
        ViewsetDataConfig(adapter="syncdreamer")
    with pytest.raises(ValueError, match="unknown data config keys"):
        parse_multiview_train_config({**load_config("multiview_tiny"), "data": {"adaptor": "viewdiff"}})


def test_trains_and_resumes_exactly(manifest, tmp_path):
    """N steps straight == N/2 steps, a new process-equivalent Trainer resuming, N/2 more
    (4 steps of 2 viewsets, 3-step data segments: the resume point and a segment boundary
    both fall inside the run)."""
    def trainer(out):
        mcfg, dcfg, tcfg, task = _cfgs()
        return Trainer(mcfg, dcfg, tcfg, manifest, out, task=task)

    s = trainer(tmp_path / "straight").train()
    assert s["step"] == 4 and all(l > 0 and l == l for l in s["losses"])
    first = trainer(tmp_path / "resumed")
    first.train(max_steps=2)
    del first
    second = trainer(tmp_path / "resumed")
    assert second.step == 2
    second.train()
    a, b = latest_checkpoint(tmp_path / "straight"), latest_checkpoint(tmp_path / "resumed")
    assert a.name == b.name == "step_00000004"
    for sub in ("model", "ema"):
        wa, wb = (load_multiview_model(p / sub).unet.state_dict() for p in (a, b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), sub
    sa, sb = (json.loads((p / "state.json").read_text()) for p in (a, b))
    assert sa["data"] == sb["data"] == [{"segment": 1, "consumed": 1}]
    assert sa["task"] == {"kind": "multiview", "data": {"adapter": "viewdiff", "selection": "random",
                                                        "crop": "center", "background": None}}
    # a different seed really changes the weights (the equality above is not vacuous)
    mcfg, dcfg, tcfg, task = _cfgs(seed=1)
    Trainer(mcfg, dcfg, tcfg, manifest, tmp_path / "other", task=task).train()
    wc = load_multiview_model(latest_checkpoint(tmp_path / "other") / "model").unet.state_dict()
    wa = load_multiview_model(a / "model").unet.state_dict()
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_loss_falls_when_overfitting_one_batch(manifest, tmp_path):
    mcfg, dcfg, tcfg, task = _cfgs(max_steps=30, log_every=30, batch_size=3)
    tr = Trainer(mcfg, dcfg, tcfg, manifest, tmp_path, task=task)
    ds = task.dataset_factory(mcfg)(manifest, "train", batch_size=3, shuffle_buffer=0, seed=0, resampled=False)
    batch = next(iter(ds))

    @torch.no_grad()
    def fixed_loss():
        g = torch.Generator().manual_seed(5)
        return sum(task.loss(tr.model, tr.model, tr.scheduler, batch, tr.device, g).item() for _ in range(8)) / 8

    before = fixed_loss()
    for _ in range(30):
        tr.train_step([batch])
    assert fixed_loss() < 0.7 * before


def test_cli_and_stage_plan(manifest, tmp_path):
    out = tmp_path / "cli"
    s = train_main(["--config", "multiview_tiny", "--shards", str(manifest), "--out", str(out),
                    "train.max_steps=2", "train.batch_size=2", "data.adapter=viewset_diffusion"])
    assert s["step"] == 2 and s["params"] > 0
    st = json.loads((latest_checkpoint(out) / "state.json").read_text())
    assert st["task"]["data"]["adapter"] == "viewset_diffusion" and st["model"]["kind"] == "multiview"
    root = manifest.parent.parent
    params = validate_params({"profile": "smoke"})
    plan = plan_viewset_training(root, params)
    assert plan == plan_viewset_training(root, params)                       # stable run id
    assert plan["config"].endswith("multiview_tiny.yaml") and plan["overrides"] == ["train.max_steps=20"]
    other = plan_viewset_training(root, validate_params({"profile": "smoke",
                                                        "viewset_train": {"overrides": ["train.lr=1e-4"]}}))
    assert other["run_id"] != plan["run_id"]
    rep = record_viewset_training(root, plan)
    assert latest_viewset_model(root)["run_id"] == plan["run_id"] == rep.version
    with pytest.raises(FileNotFoundError, match="viewset_manifest"):
        plan_viewset_training(tmp_path / "empty", params)
