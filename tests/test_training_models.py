"""Models and objective: novel-view init, IVID condition noise, save/load, CFG dropout, loss."""
from __future__ import annotations

import torch

from training.diffusion import (DiffusionConfig, class_labels_from_batch, diffusion_loss, drop_labels,
                                make_ddpm_scheduler, model_inputs)
from training.models import (NovelViewModel, build_model, init_novel_from_first_view, load_model,
                             tiny_config)


def _cond(b=2, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, 1, s, s, generator=g) > 0.5).float()
    return {"cond_rgb": torch.rand(b, 3, s, s, generator=g) * 2 - 1,
            "cond_depth": torch.rand(b, 1, s, s, generator=g) * 2 - 1, "mask": mask, "mask_rgb": mask}


def test_novel_view_init_reproduces_first_view():
    torch.manual_seed(0)
    first = build_model(tiny_config("first_view", class_cond="pose", num_classes=3))
    novel = init_novel_from_first_view(build_model(tiny_config("novel_view", class_cond="pose", num_classes=3)), first)
    assert novel.unet.conv_in.weight.shape[1] == 10
    assert torch.count_nonzero(novel.unet.conv_in.weight[:, 4:]) == 0
    x, t, lab = torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), torch.tensor([0, -1])
    with torch.no_grad():
        assert torch.allclose(first(x, t, lab), novel(x, t, class_labels=lab, **_cond()), atol=1e-5)


def test_condition_noise_replaces_only_masked_out_pixels():
    c = _cond()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    x = torch.zeros(2, 4, 16, 16)
    a = NovelViewModel.condition_input(x, c["cond_rgb"], c["cond_depth"], c["mask"], c["mask_rgb"], g1)
    b = NovelViewModel.condition_input(x, c["cond_rgb"], c["cond_depth"], c["mask"], c["mask_rgb"], g2)
    assert a.shape == (2, 10, 16, 16)
    inside = c["mask"].bool().expand(-1, 3, -1, -1)
    assert torch.equal(a[:, 5:8][inside], c["cond_rgb"][inside])          # kept inside mask_rgb
    assert torch.equal(a[:, 8:9][c["mask"].bool()], c["cond_depth"][c["mask"].bool()])
    assert not torch.equal(a[:, 5:8][~inside], b[:, 5:8][~inside])         # noise outside
    assert torch.equal(a[:, 4:5], c["mask_rgb"]) and torch.equal(a[:, 9:10], c["mask"])


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = build_model(tiny_config("novel_view", class_cond="label", num_classes=2))
    m.save_pretrained(tmp_path / "m")
    m2 = load_model(tmp_path / "m")
    assert isinstance(m2, NovelViewModel) and m2.config == m.config
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_labels_dropout_and_loss():
    batch = {"pose": torch.tensor([0, 2, 5, -1]), "label": torch.tensor([-1, -1, -1, -1])}
    lab = class_labels_from_batch(batch, "pose", 3, "cpu")
    assert lab.tolist() == [0, 2, 3, 3]                                    # out of range / absent -> null
    assert class_labels_from_batch(batch, "none", 0, "cpu") is None
    many = torch.zeros(20000, dtype=torch.long)
    frac = (drop_labels(many, 0.1, 7, torch.Generator().manual_seed(0)) == 7).float().mean().item()
    assert abs(frac - 0.1) < 0.01
    torch.manual_seed(0)
    m = build_model(tiny_config("novel_view"))
    b = {"target": torch.rand(2, 3, 16, 16), "target_depth": torch.rand(2, 1, 16, 16), "cond": torch.rand(2, 3, 16, 16),
         "cond_depth": torch.rand(2, 1, 16, 16), "mask": torch.ones(2, 1, 16, 16), "mask_rgb": torch.ones(2, 1, 16, 16)}
    inp = model_inputs(b, "novel_view", "cpu")
    assert inp["x0"].shape == (2, 4, 16, 16) and inp["x0"].min() >= -1 and inp["x0"].max() <= 1
    sched = make_ddpm_scheduler(DiffusionConfig())
    assert sched.config.num_train_timesteps == 1000 and sched.config.beta_schedule == "linear"
    l1 = diffusion_loss(m, sched, inp, None, p_uncond=0.1, null_class=None, generator=torch.Generator().manual_seed(3))
    l2 = diffusion_loss(m, sched, inp, None, p_uncond=0.1, null_class=None, generator=torch.Generator().manual_seed(3))
    assert l1.ndim == 0 and torch.isfinite(l1) and l1.item() == l2.item()
