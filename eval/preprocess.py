"""Evaluation preprocessing exactly as IVID evaluates (JeffreyXiang/ivid ``eval.py``).

IVID's ``center_crop_and_resize``: crop the central square of side ``min(w, h)`` with the
integer offsets ``(w - h) // 2`` (or ``(h - w) // 2``), resize it to ``image_size`` x
``image_size`` with PIL ``Image.LANCZOS``, store as 8-bit PNG. Generated images are saved
as uint8 PNGs at the model resolution; real images go through the crop and resize. The
FID/KID feature extractors then read uint8 images, so every image that enters a metric
here is uint8 [B, 3, S, S] (values 0..255), with S the evaluation resolution.

Float images are quantised like ``torchvision.utils.save_image`` (which IVID's sampler
scripts use): ``uint8(clamp(x * 255 + 0.5, 0, 255))``, i.e. round half up.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """IVID ``center_crop_and_resize``: central square crop, LANCZOS resize to ``size``.

    Args:
        image: a PIL image of any mode and size (converted to RGB first; IVID converts
            CMYK; any other mode is converted too so the result is always 3-channel).
        size: output side in pixels (> 0).

    Returns:
        RGB PIL image of ``size`` x ``size``. A square image of side ``size`` is returned
        unchanged (PIL's resize to the same size is the identity).

    Raises:
        ValueError: ``size`` <= 0.
    """
    if size <= 0:
        raise ValueError(f"evaluation resolution must be > 0, got {size}")
    image = image.convert("RGB") if image.mode != "RGB" else image
    w, h = image.size
    if w > h:
        image = image.crop(((w - h) // 2, 0, (w + h) // 2, h))
    elif h > w:
        image = image.crop((0, (h - w) // 2, w, (h + w) // 2))
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.LANCZOS)


def float_to_uint8(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Quantise float images in [0, 1] to uint8 (``save_image`` rounding).

    Args:
        images: float [B, C, H, W] (or any shape) in [0, 1]; values outside are clamped.

    Returns:
        uint8 tensor of the same shape, on the CPU.
    """
    x = torch.as_tensor(images).detach().to("cpu", torch.float32)
    return (x * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8)


def to_eval_uint8(images: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """Images as the metrics see them: uint8, IVID centre crop + LANCZOS to ``size``.

    Args:
        images: float [B, 3, H, W] in [0, 1] (any H x W), or uint8 [B, 3, H, W]; torch or
            numpy. Only the first 3 channels are used, so RGBD samples [B, 4, H, W] can be
            passed directly (depth is dropped).
        size: evaluation side in pixels.

    Returns:
        uint8 tensor [B, 3, size, size] on the CPU. Square inputs of side ``size`` are only
        quantised (no resampling).

    Raises:
        ValueError: not a [B, C>=3, H, W] batch, or ``size`` <= 0.
    """
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[1] < 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(x.shape)}")
    x = x[:, :3]
    u8 = x.to("cpu") if x.dtype == torch.uint8 else float_to_uint8(x)
    if tuple(u8.shape[-2:]) == (size, size):
        if size <= 0:
            raise ValueError(f"evaluation resolution must be > 0, got {size}")
        return u8.contiguous()
    out = torch.empty((u8.shape[0], 3, size, size), dtype=torch.uint8)
    for i, img in enumerate(u8.permute(0, 2, 3, 1).numpy()):
        pil = center_crop_resize(Image.fromarray(np.ascontiguousarray(img)), size)
        out[i] = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
    return out


def uint8_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 [B, 3, H, W] in [0, 1] (``x / 255``)."""
    return images.to(torch.float32) / 255.0
