"""IVID condition augmentations: pre-warp noise, blur, texture erosion.

Follows JeffreyXiang/ivid ``datasets/base.py`` (``WarpDataset.__getitem__``, augments
``prewarp_noise``, ``blur``, ``erode_rgb``) and the paper (Xiang et al., ICCV 2023,
Sec. 3.2): the augmentations touch the **condition** only; the target keeps the original
RGBD. Every function is pure: its randomness comes from an explicit ``torch.Generator``
or integer seed (CPU generator), and it draws a fixed number of values in a fixed order,
so results depend only on the inputs and the seed.

Single samples: images ``[C, H, W]`` float in [0, 1], depth ``[1, H, W]`` z-depth, masks
``[1, H, W]`` bool. (Call per sample; that keeps a sample's result independent of what
else is in a batch.)
"""
from __future__ import annotations

import torch

Gen = torch.Generator | int


def _gen(generator: Gen) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator(device="cpu").manual_seed(int(generator))


def _uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g, dtype=torch.float64))


def prewarp_noise(image: torch.Tensor, depth: torch.Tensor, generator: Gen, *,
                  sigma_max: float = 0.005, near: float = 0.5,
                  far: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """IVID ``prewarp_noise``: Gaussian noise of std ``sigma = sigma_max * U(0, 1)`` on RGB
    and on the depth in IVID's stored z-buffer units.

    IVID adds the noise to its RGBD array, whose depth channel is the z-buffer value
    ``v = (1/z - 1/near) / (1/far - 1/near)`` in [0, 1], and linearises it again with
    ``v`` clipped to [1e-6, 1 - 1e-6] (``rgbd_3d/utils.py`` ``linearize_depth``). So the
    returned depth is clamped to about [near, far], as in IVID. One ``sigma`` per call.

    Args:
        image: float [C, H, W] (any range; not clipped, as IVID).
        depth: float [1, H, W] z-depth (same unit as ``near``/``far``); invalid values
            (non-finite or <= 0) stay as they are.
        generator: ``torch.Generator`` (CPU) or int seed. Draws: 1 uniform, then
            ``C*H*W`` normals for RGB, then ``H*W`` normals for depth.
        sigma_max: IVID 0.005 (>= 0); near, far: IVID z-buffer planes, 0 < near < far.

    Returns:
        (image, depth): new float32 tensors of the input shapes.

    Raises:
        ValueError: bad shapes, ``sigma_max < 0`` or not ``0 < near < far``.
    """
    if image.dim() != 3 or depth.dim() != 3 or depth.shape[0] != 1 or depth.shape[1:] != image.shape[1:]:
        raise ValueError(f"expected image [C,H,W] and depth [1,H,W], got {tuple(image.shape)}, {tuple(depth.shape)}")
    if sigma_max < 0 or not 0 < near < far:
        raise ValueError("need sigma_max >= 0 and 0 < near < far")
    g = _gen(generator)
    sigma = sigma_max * _uniform(g)
    n_rgb = torch.randn(image.shape, generator=g, dtype=torch.float32)
    n_d = torch.randn(depth.shape, generator=g, dtype=torch.float32)
    img = image.float() + (n_rgb * sigma).to(image.device)
    z = depth.float()
    valid = torch.isfinite(z) & (z > 0)
    zs = torch.where(valid, z, torch.ones_like(z)).double()
    a, b = 1.0 / near, 1.0 / far - 1.0 / near
    v = ((1.0 / zs - a) / b).clamp(0.0, 1.0)          # stored z-buffer value (clipped, IVID)
    v = (v + (n_d * sigma).double().to(z.device)).clamp(1e-6, 1.0 - 1e-6)
    znew = (1.0 / (a + v * b)).float()
    return img, torch.where(valid, znew, z)


def random_blur(image: torch.Tensor, generator: Gen, *, p: float = 0.8,
                kernel_size: int = 3) -> tuple[torch.Tensor, bool, float]:
    """IVID ``blur``: with probability ``p``, a Gaussian blur with ``sigma = U(0, 1) + 1e-3``.

    IVID replaces the condition RGB by ``cv2.GaussianBlur(x_0, (3, 3), sigma)`` of the
    original (clean) image, then masks it; this returns the blurred image and leaves the
    masking to the caller. The blur is :func:`gaussian_blur` (reflect padding, like
    OpenCV's default BORDER_REFLECT_101).

    Args:
        image: float [C, H, W] (H, W >= kernel_size // 2 + 1).
        generator: ``torch.Generator`` (CPU) or int seed. Always draws 2 uniforms
            (apply?, sigma), so the stream does not depend on the outcome.
        p: probability in [0, 1]; kernel_size: odd, >= 1.

    Returns:
        (image_out float32 [C, H, W] -- the input unchanged when not applied --,
        applied, sigma).

    Raises:
        ValueError: ``p`` outside [0, 1] or an even / non-positive kernel size.
    """
    if not 0.0 <= p <= 1.0 or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"need 0 <= p <= 1 and an odd kernel_size >= 1, got {p}, {kernel_size}")
    g = _gen(generator)
    u, sigma = _uniform(g), _uniform(g) + 1e-3
    if u >= p:
        return image.float(), False, sigma
    return gaussian_blur(image, kernel_size, sigma), True, sigma


def gaussian_blur(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Gaussian blur of a float [C, H, W] image with a ``kernel_size`` x ``kernel_size``
    kernel, reflect padding (OpenCV BORDER_REFLECT_101), float32 [C, H, W] out.

    The same kernel and arithmetic as ``torchvision.transforms.functional.gaussian_blur``
    (tested equal), without importing torchvision: its import pulls in torch._dynamo and
    costs several seconds per warp worker process.
    """
    img = image.float()
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, dtype=img.dtype, device=img.device)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    k1 = pdf / pdf.sum()
    kernel = torch.mm(k1[:, None], k1[None, :]).expand(img.shape[0], 1, kernel_size, kernel_size)
    r = kernel_size // 2
    padded = torch.nn.functional.pad(img[None], [r, r, r, r], mode="reflect")
    return torch.nn.functional.conv2d(padded, kernel, groups=img.shape[0])[0]


def erode(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Binary erosion with a k x k square (``cv2.erode(mask, ones((k, k)))``).

    Pixels outside the image do not erode (OpenCV's default border). ``k = 1`` is the
    identity.

    Args:
        mask: bool [..., H, W]; k: odd, >= 1.
    Returns:
        bool tensor of the same shape.
    Raises:
        ValueError: even or non-positive ``k``.
    """
    if k < 1 or k % 2 == 0:
        raise ValueError(f"erosion size must be odd and >= 1, got {k}")
    if k == 1:
        return mask.clone()
    shape = mask.shape
    m = (~mask).reshape(-1, 1, *shape[-2:]).float()
    return ~(torch.nn.functional.max_pool2d(m, k, stride=1, padding=k // 2) > 0).reshape(shape)


def texture_erosion(mask: torch.Tensor, generator: Gen,
                    sizes=(1, 3, 5, 7, 9)) -> tuple[torch.Tensor, int]:
    """IVID ``erode_rgb``: ``mask_rgb = erode(mask, k x k)`` with ``k`` uniform in ``sizes``
    (IVID: ``2 * randint(5) + 1``). The caller zeroes the condition RGB outside
    ``mask_rgb``; the depth keeps the full ``mask``.

    Args:
        mask: bool [..., H, W]; generator: ``torch.Generator`` (CPU) or int seed (draws
            one integer); sizes: non-empty sequence of odd ints >= 1.

    Returns:
        (mask_rgb bool of the same shape, k).

    Raises:
        ValueError: empty ``sizes`` or an invalid size.
    """
    sizes = [int(s) for s in sizes]
    if not sizes:
        raise ValueError("sizes must not be empty")
    g = _gen(generator)
    k = sizes[int(torch.randint(len(sizes), (), generator=g))]
    return erode(mask, k), k
