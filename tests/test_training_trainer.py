"""Trainer: overfitting, exact resume, DDP (2 gloo processes, disjoint data), CLIs, Pipes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from test_training_helpers import write_tiny_shards
from training.diffusion import DiffusionConfig, diffusion_loss, model_inputs
from training.models import load_model, tiny_config
from training.trainer import TrainConfig, Trainer, latest_checkpoint

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny_shards(tmp_path_factory.mktemp("shards"), n=8, size=16, maxcount=4)


def _tcfg(**kw):
    base = dict(batch_size=8, lr=1e-3, max_steps=10, log_every=5, ckpt_every=1000, shuffle_buffer=8,
                segment_steps=4, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@torch.no_grad()
def _eval_loss(trainer, batch, reps=8):
    """Loss over fixed (t, noise) draws: comparable before and after training."""
    inputs = model_inputs(batch, trainer.mcfg.kind, "cpu")
    g = torch.Generator().manual_seed(123)
    return sum(diffusion_loss(trainer.model, trainer.scheduler, inputs, None, p_uncond=0.0, null_class=None,
                              generator=g).item() for _ in range(reps)) / reps


@pytest.mark.parametrize("kind", ["first_view", "novel_view"])
def test_tiny_config_overfits_8_samples(shards, tmp_path, kind):
    tr = Trainer(tiny_config(kind), DiffusionConfig(), _tcfg(max_steps=40, log_every=20), shards, tmp_path)
    from training.data import make_dataset
    batch = next(iter(make_dataset(shards, "train", batch_size=8)))
    before = _eval_loss(tr, batch)
    events = []
    tr.callback = events.append
    tr.train()
    after = _eval_loss(tr, batch)
    assert after <= 0.5 * before, (before, after)
    logs = [e for e in events if e["event"] == "log"]
    assert [e["step"] for e in logs] == [20, 40] and all(e["samples_per_s"] > 0 for e in logs)
    rows = (tmp_path / "logs" / "train.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,samples_per_s,elapsed_s" and len(rows) == 3
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "logs" / "tb").iterdir())


def _weights(path):
    return {k: v.clone() for k, v in load_model(path).unet.state_dict().items()}


def test_resume_is_exact(shards, tmp_path):
    cfg = lambda: tiny_config("novel_view", class_cond="pose", num_classes=3)
    tc = _tcfg(max_steps=6, grad_accum=2, batch_size=4, ckpt_every=3)
    Trainer(cfg(), DiffusionConfig(), tc, shards, tmp_path / "straight").train()
    first = Trainer(cfg(), DiffusionConfig(), tc, shards, tmp_path / "resumed")
    first.train(max_steps=3)
    del first
    second = Trainer(cfg(), DiffusionConfig(), tc, shards, tmp_path / "resumed")   # resume="auto"
    assert second.step == 3
    second.train()
    a, b = latest_checkpoint(tmp_path / "straight"), latest_checkpoint(tmp_path / "resumed")
    assert a.name == b.name == "step_00000006"
    for sub in ("model", "ema"):
        wa, wb = _weights(a / sub), _weights(b / sub)
        for k in wa:
            assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=1e-5), (sub, k)
    sa, sb = (json.loads((p / "state.json").read_text()) for p in (a, b))
    # 6 steps x 2 micro-batches, 4 steps (8 micro-batches) per data segment
    assert sa["data"] == sb["data"] == [{"segment": 1, "consumed": 4}]
    lines = (tmp_path / "resumed" / "logs" / "train.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in lines[1:]] == ["3", "5", "6"]


def test_csv_keeps_each_step_once_after_resume(shards, tmp_path):
    """A run killed after logging past its last checkpoint re-logs those steps on resume:
    train.csv must hold each step once (the rows of the lost steps are replaced)."""
    tc = _tcfg(max_steps=6, batch_size=4, log_every=2, ckpt_every=3)

    def die_after_4(event):
        if event["event"] == "log" and event["step"] == 4:
            raise KeyboardInterrupt  # a kill after step 4 was logged, last checkpoint at 3

    first = Trainer(tiny_config("first_view"), DiffusionConfig(), tc, shards, tmp_path,
                    progress_callback=die_after_4)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    path = tmp_path / "logs" / "train.csv"
    assert [r.split(",")[0] for r in path.read_text().splitlines()[1:]] == ["2", "4"]
    second = Trainer(tiny_config("first_view"), DiffusionConfig(), tc, shards, tmp_path)
    assert second.step == 3
    second.train()
    rows = path.read_text().splitlines()
    assert rows[0] == "step,loss,lr,samples_per_s,elapsed_s"
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6"]


DDP_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from training.diffusion import DiffusionConfig
    from training.models import tiny_config
    from training.trainer import TrainConfig, Trainer
    shards, out, res = sys.argv[1:4]
    tr = Trainer(tiny_config("first_view"), DiffusionConfig(),
                 TrainConfig(batch_size=4, max_steps=2, resampled=False, shuffle_buffer=0, log_every=1,
                             ckpt_every=1000, lr=1e-3), shards, out)
    seen, step = [], tr.train_step
    def spy(batches):
        seen.append([k for b in batches for k in b["key"]])
        return step(batches)
    tr.train_step = spy
    tr.train()
    w = float(sum(p.double().sum() for p in tr.model.parameters()))
    json.dump({"rank": tr.rank, "world": tr.world, "seen": seen, "wsum": w}, open(res + f".{tr.rank}", "w"))
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_see_disjoint_data(shards, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([PY, str(script), str(shards), str(tmp_path / "run"), str(tmp_path / "res")],
                                      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=170)[0].decode()[-3000:] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    r = [json.loads((tmp_path / f"res.{i}").read_text()) for i in range(2)]
    assert r[0]["world"] == r[1]["world"] == 2
    k0, k1 = (set(k for step in x["seen"] for k in step) for x in r)
    assert len(k0) == len(k1) == 4 and not k0 & k1                               # disjoint, 4 samples each
    assert all(len(s) == 4 for x in r for s in x["seen"])
    assert r[0]["wsum"] == pytest.approx(r[1]["wsum"], rel=1e-6)                 # DDP kept replicas equal
    assert latest_checkpoint(tmp_path / "run").name == "step_00000002"


def test_cli_train_sample_and_pipes_standalone(shards, tmp_path):
    from training import pipes_entry, sample, train
    s = train.main(["--config", "tiny", "--shards", str(shards), "--out", str(tmp_path / "fv"),
                    "train.max_steps=2", "class_cond=pose", "num_classes=3"])
    assert s["step"] == 2 and (tmp_path / "fv" / "config.yaml").is_file()
    s = pipes_entry.main(["--config", "tiny", "--shards", str(shards), "--out", str(tmp_path / "nv"),
                          "model=novel_view", "train.max_steps=2", "class_cond=pose", "num_classes=3",
                          f"train.init_from={latest_checkpoint(tmp_path / 'fv')}"])
    assert s["step"] == 2
    out = sample.main(["--model", str(tmp_path / "fv"), "--novel-model", str(tmp_path / "nv"),
                       "--out", str(tmp_path / "vs"), "mode=viewset", "num=1", "steps=2",
                       "yaws=[0.0, 0.3]", "pitches=[0.0]", "classes=[1]", "guidance=2.0"])
    assert out["views"] == 2
    import numpy as np
    d = np.load(tmp_path / "vs" / "samples.npz")
    assert d["rgb"].shape == (1, 2, 16, 16, 3) and d["w2c"].shape == (2, 4, 4)
    assert (tmp_path / "vs" / "rgb_0000.png").is_file()


def test_pipes_entry_under_dagster(shards, tmp_path):
    dg = pytest.importorskip("dagster")
    messages = []

    @dg.asset(name="trained_models_test", required_resource_keys={"pipes"})
    def trained(context):
        inv = context.resources.pipes.run(command=[PY, "-m", "training.pipes_entry"], context=context,
                        extras={"config": "tiny", "shards": str(shards), "out": str(tmp_path / "run"),
                                "overrides": ["train.max_steps=2", "train.log_every=1"]},
                        env={"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)})
        messages.extend(inv.get_custom_messages())
        return inv.get_materialize_result()

    res = dg.materialize([trained], resources={"pipes": dg.PipesSubprocessClient(cwd=str(REPO))},
                         instance=dg.DagsterInstance.ephemeral())
    assert res.success
    meta = res.asset_materializations_for_node("trained_models_test")[0].metadata
    assert meta["steps"].value == 2 and meta["samples_per_s"].value > 0 and meta["final_loss"].value > 0
    assert [m["step"] for m in messages if m.get("kind") == "training_progress"] == [1, 2]
    assert latest_checkpoint(tmp_path / "run").name == "step_00000002"
