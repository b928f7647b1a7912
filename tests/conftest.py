"""Test-wide settings: never touch the network, small thread counts, shared tiny models."""
import os

# must be set before huggingface_hub / transformers / timm are imported anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_depth_dir(tmp_path_factory):
    """A tiny random Depth Anything checkpoint saved with save_pretrained."""
    from pipelines.depth import save_tiny_depth_model

    return save_tiny_depth_model(tmp_path_factory.mktemp("tiny_depth"))


@pytest.fixture(scope="session")
def tiny_dinov2_path(tmp_path_factory):
    """A tiny random timm DINOv2 checkpoint (safetensors)."""
    from pipelines.features import save_tiny_dinov2

    return save_tiny_dinov2(tmp_path_factory.mktemp("tiny_dinov2") / "dinov2.safetensors", image_size=56)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for the whole suite: the tests use tiny models, which run fastest
    on one thread, and with 2 threads on a shared 2-core machine every parallel op can wait
    for a descheduled OpenMP worker (orders of magnitude slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
