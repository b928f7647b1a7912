"""DINOv2 feature extraction with tiny random timm models loaded through the local path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.features import extract_features, load_dinov2, save_tiny_dinov2
from pipelines.models import RANDOM_WEIGHTS, WeightsUnavailableError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_dinov2(tmp_path_factory.mktemp("w") / "tiny.safetensors", image_size=56, seed=3)
    return path, load_dinov2("vit_small_patch14_dinov2.lvd142m", str(path), profile="default",
                             image_size=56, device="cpu")


@pytest.fixture
def offline(monkeypatch):
    """The hub branch must fail fast here (no network): HF offline mode."""
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


def test_local_checkpoint_is_loaded(tiny):
    from safetensors.torch import load_file
    path, res = tiny
    assert res.origin == f"local:{path}" and not res.is_random
    saved = load_file(str(path))
    state = res.model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)  # weights really came from the file


def test_shapes_dtypes_and_l2_norm(tiny):
    _, res = tiny
    imgs = np.random.default_rng(0).random((5, 3, 70, 90), dtype=np.float32)  # not square, resized
    fb = extract_features(res.model, imgs, batch_size=2)
    assert fb.patch.shape == (5, 4, 4, 48) and fb.patch.dtype == np.float16
    assert fb.cls.shape == (5, 48) and fb.cls.dtype == np.float16
    assert fb.flipped_patch.shape == fb.patch.shape and fb.flipped_cls.shape == fb.cls.shape
    for a in (fb.patch, fb.cls, fb.flipped_patch):
        np.testing.assert_allclose(np.linalg.norm(a.astype(np.float32), axis=-1), 1.0, atol=2e-3)
    assert fb.images_per_second > 0
    one = extract_features(res.model, imgs, batch_size=5, flipped=False)  # batching does not matter
    assert one.flipped_patch is None and one.flipped_cls is None
    np.testing.assert_allclose(one.patch.astype(np.float32), fb.patch.astype(np.float32), atol=2e-3)
    assert not np.allclose(fb.patch[0], fb.patch[1], atol=1e-2)  # images give different features


def test_flipped_features(tiny):
    _, res = tiny
    rng = np.random.default_rng(1)
    half = rng.random((2, 3, 56, 28), dtype=np.float32)
    sym = np.concatenate([half, half[..., ::-1]], -1)  # mirror-symmetric images
    fb = extract_features(res.model, sym)
    np.testing.assert_allclose(fb.flipped_patch.astype(np.float32), fb.patch.astype(np.float32), atol=2e-3)
    imgs = rng.random((2, 3, 56, 56), dtype=np.float32)
    fb = extract_features(res.model, imgs)
    mirrored = extract_features(res.model, imgs[..., ::-1], flipped=False)  # negative strides are fine
    np.testing.assert_allclose(fb.flipped_patch.astype(np.float32), mirrored.patch.astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(fb.flipped_cls.astype(np.float32), mirrored.cls.astype(np.float32), atol=2e-3)
    assert not np.allclose(fb.flipped_patch, fb.patch, atol=1e-2)


def test_register_variant_drops_register_tokens(tmp_path):
    path = save_tiny_dinov2(tmp_path / "reg.safetensors", model_name="vit_small_patch14_reg4_dinov2",
                            image_size=42)
    res = load_dinov2("vit_small_patch14_reg4_dinov2", str(path), profile="default", image_size=42)
    assert res.model.num_prefix_tokens == 5
    fb = extract_features(res.model, np.zeros((1, 3, 42, 42), np.float32), flipped=False)
    assert fb.patch.shape == (1, 3, 3, 48)


def test_unresolvable_weights_name_the_parameter(tmp_path, offline):
    with pytest.raises(WeightsUnavailableError, match="features.local_path") as e:
        load_dinov2("vit_small_patch14_dinov2.lvd142m", str(tmp_path / "missing.safetensors"),
                    profile="default", image_size=56)
    assert "features.model" in str(e.value)
    torch.save({}, tmp_path / "empty.pth")  # a checkpoint that does not fit fails, then the hub fails
    with pytest.raises(WeightsUnavailableError, match="features.local_path"):
        load_dinov2("vit_small_patch14_dinov2", str(tmp_path / "empty.pth"), profile="default", image_size=56)


def test_demo_profile_falls_back_to_random(offline):
    res = load_dinov2("vit_small_patch14_reg4_dinov2.lvd142m", None, profile="demo", image_size=28)
    assert res.origin == RANDOM_WEIGHTS and res.is_random
    assert type(res.model).__name__ == "VisionTransformer" and res.model.num_prefix_tokens == 5
    fb = extract_features(res.model, np.ones((1, 3, 28, 28), np.float32))
    assert fb.patch.shape[1:3] == (2, 2)


@pytest.mark.parametrize("size", [50, 0, 225])
def test_image_size_must_be_multiple_of_14(size, tmp_path):
    with pytest.raises(ValueError, match="multiple of 14"):
        load_dinov2("vit_small_patch14_dinov2", None, profile="demo", image_size=size)
    with pytest.raises(ValueError, match="multiple of 14"):
        save_tiny_dinov2(tmp_path / "x.safetensors", image_size=size)


def test_not_a_dinov2_name():
    with pytest.raises(ValueError, match="DINOv2"):
        load_dinov2("resnet50", None, profile="demo")
    with pytest.raises(ValueError):
        extract_features(torch.nn.Linear(1, 1), np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="float"):
        extract_features(torch.nn.Linear(1, 1), np.zeros((2, 3, 8, 8), np.uint8))


def test_random_fallback_is_seeded_and_leaves_the_global_stream_alone(offline):
    """Two demo loads (as two demo runs) give identical weights and features; the caller's
    torch random stream is neither reset nor advanced by the fallback."""
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = load_dinov2("vit_small_patch14_dinov2", None, profile="demo", image_size=28, device="cpu")
    assert torch.equal(torch.rand(3), expected_next)
    torch.manual_seed(999)  # a different global state must not matter
    b = load_dinov2("vit_small_patch14_dinov2", None, profile="demo", image_size=28, device="cpu")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    imgs = np.random.default_rng(1).random((2, 3, 28, 28), dtype=np.float32)
    fa, fb = extract_features(a.model, imgs), extract_features(b.model, imgs)
    assert np.array_equal(fa.patch, fb.patch) and np.array_equal(fa.cls, fb.cls)
    assert not np.array_equal(fa.patch[0], fa.patch[1])  # not a degenerate constant model


def test_save_tiny_dinov2_seed_determines_weights(tmp_path):
    from safetensors.torch import load_file
    a = load_file(str(save_tiny_dinov2(tmp_path / "a.safetensors", image_size=28, seed=5)))
    b = load_file(str(save_tiny_dinov2(tmp_path / "b.safetensors", image_size=28, seed=5)))
    c = load_file(str(save_tiny_dinov2(tmp_path / "c.safetensors", image_size=28, seed=6)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])
