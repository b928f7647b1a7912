"""Monocular depth (the ``depth_maps`` stage): Depth Anything V2 through transformers.

``AutoModelForDepthEstimation`` + ``AutoImageProcessor`` (default
``depth-anything/Depth-Anything-V2-Small-hf``), batched, CUDA with bf16/fp16 autocast when
available, CPU fp32 otherwise. The model predicts *relative disparity* (larger = closer);
it is resized back to the input resolution (bicubic) and converted to z-depth with IVID's
convention (:mod:`pipelines.depth_convention`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from pipelines.depth_convention import disparity_to_depth, encode_zbuffer
from pipelines.images import encode_png
from pipelines.models import (RANDOM_WEIGHTS_SEED, Resolved, autocast_dtype, load_from_hub, pick_device,
                             resolve_weights, seeded)


DEPTH_SCHEMA = pa.schema([("key", pa.string()), ("disparity_f32", pa.binary()),
                          ("depth_png", pa.binary()), ("height", pa.int32()), ("width", pa.int32()),
                          ("depth_min", pa.float32()), ("depth_max", pa.float32()),
                          ("nonfinite", pa.int32())])


def save_tiny_depth_model(path: str | Path, *, seed: int = 0, input_size: int = 70) -> Path:
    """Save a tiny randomly initialised ``DepthAnythingForDepthEstimation`` and its
    ``DPTImageProcessor`` with ``save_pretrained`` (the layout of a hub checkpoint).

    For tests and the demo/smoke fallback: same classes as Depth-Anything-V2, a 4-layer
    32-wide DINOv2 backbone, processor resizing to ``input_size`` (multiple of 14).
    """
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config,
                              DPTImageProcessor)

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=input_size, reshape_hidden_states=False,
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    config = DepthAnythingConfig(backbone_config=backbone, fusion_hidden_size=16, neck_hidden_sizes=[8, 16, 32, 32],
                                 reassemble_hidden_size=32, head_hidden_size=8, patch_size=14)
    with seeded(seed):
        model = DepthAnythingForDepthEstimation(config)
    # A random head outputs disparity ~0 with isolated spikes (its final ReLU), i.e. depth
    # that is a field of discontinuities; bias the last conv so the random model predicts a
    # (nearly) constant disparity, a fronto-parallel plane, and warping demos stay readable.
    last_conv = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last_conv.weight.mul_(0.05)
        last_conv.bias.fill_(1.0)
    processor = DPTImageProcessor(do_resize=True, size={"height": input_size, "width": input_size},
                                  keep_aspect_ratio=True, ensure_multiple_of=14, resample=3, do_pad=False,
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _load(source: str, **kw):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    model = AutoModelForDepthEstimation.from_pretrained(source, **kw)
    return model.eval(), AutoImageProcessor.from_pretrained(source, **kw)


def load_depth_model(model_id: str | None, local_dir: str | None, *, profile: str = "default",
                     device: str | None = None) -> Resolved:
    """Resolve and load the depth estimator (local directory, then hub id/cache).

    Returns:
        :class:`~pipelines.models.Resolved` with ``model`` (on ``device``, eval mode) and
        ``extra`` = the image processor.

    Raises:
        WeightsUnavailableError: nothing resolves (names ``depth.local_dir``/``depth.model``);
            under profiles demo/smoke a tiny random model (:func:`save_tiny_depth_model`,
            seed :data:`pipelines.models.RANDOM_WEIGHTS_SEED`) is used instead; its
            temporary checkpoint directory is deleted once loaded.
    """
    import tempfile

    def make_random():
        # saved and loaded back through the checkpoint code path, then the directory is
        # removed (the loaded model holds its weights in memory)
        with tempfile.TemporaryDirectory(prefix="viewforge-tiny-depth-", ignore_cleanup_errors=True) as tmp:
            return _load(str(save_tiny_depth_model(tmp, seed=RANDOM_WEIGHTS_SEED)))

    res = resolve_weights(local=local_dir, hub_id=model_id, param_local="depth.local_dir",
                          param_hub="depth.model", load_local=_load,
                          load_hub=lambda h: load_from_hub(_load, h), make_random=make_random,
                          profile=profile)
    res.model.to(pick_device(device))
    return res


@torch.inference_mode()
def estimate_disparity(resolved: Resolved, images: np.ndarray, *, batch_size: int = 8) -> torch.Tensor:
    """Relative disparity for a batch of images, at the images' resolution.

    Args:
        resolved: from :func:`load_depth_model`.
        images: uint8 [N,H,W,3] RGB.
        batch_size: images per forward pass.

    Returns:
        float32 CPU tensor [N,1,H,W], relative disparity (model units, larger = closer).
    """
    model, processor = resolved.model, resolved.extra
    device = next(model.parameters()).device
    amp = autocast_dtype(device)
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        inputs = processor(images=list(batch), return_tensors="pt").to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            pred = model(**inputs).predicted_depth
        pred = F.interpolate(pred.float()[:, None], size=batch.shape[1:3], mode="bicubic", align_corners=False)
        out.append(pred.clamp_min(0).cpu())
    return torch.cat(out) if out else torch.zeros((0, 1) + images.shape[1:3])


def depth_rows(keys: Sequence[str], disparity: torch.Tensor, *, near: float, far: float,
               min_disparity: float) -> pa.Table:
    """Stage table rows: raw disparity (float32 bytes, [H,W] C-order), IVID z-buffer PNG
    (uint16) of the z-depth, and per-image stats. Schema :data:`DEPTH_SCHEMA`."""
    depth = disparity_to_depth(disparity, near=near, min_disparity=min_disparity)
    rows: dict[str, list] = {n: [] for n in DEPTH_SCHEMA.names}
    for k, d, z in zip(keys, disparity, depth):
        d_np = d[0].numpy()
        rows["key"].append(k)
        rows["disparity_f32"].append(np.ascontiguousarray(d_np, dtype=np.float32).tobytes())
        rows["depth_png"].append(encode_png(encode_zbuffer(z[0], near=near, far=far)))
        rows["height"].append(d_np.shape[0])
        rows["width"].append(d_np.shape[1])
        rows["depth_min"].append(float(z.min()))
        rows["depth_max"].append(float(z.max()))
        rows["nonfinite"].append(int((~torch.isfinite(d)).sum()))
    return pa.table(rows, schema=DEPTH_SCHEMA)


def load_disparity(table: pa.Table) -> torch.Tensor:
    """float32 [N,1,H,W] disparity from stage rows (exact inverse of the storage)."""
    arrs = [np.frombuffer(b, dtype=np.float32).reshape(h, w)
            for b, h, w in zip(table.column("disparity_f32").to_pylist(), table.column("height").to_pylist(),
                               table.column("width").to_pylist())]
    return torch.from_numpy(np.stack(arrs).astype(np.float32))[:, None]
