"""Dagster resources and per-asset Config classes whose defaults come from params.yaml."""

import os
from pathlib import Path
from typing import Any, Optional

import dagster as dg

from pipelines.config import data_root, deep_merge, load_params

PARAMS = load_params()


class ViewforgeSettings(dg.ConfigurableResource):
    """Run-wide settings: data root, profile, global seed, chunk size, torch device."""

    data_root: str = str(data_root())
    profile: str = os.environ.get("VIEWFORGE_PROFILE") or str(PARAMS.get("profile", "default"))
    seed: int = int(PARAMS.get("seed", 0))
    chunk_size: int = int(PARAMS.get("chunk_size", 256))
    device: Optional[str] = None

    def root(self) -> Path:
        p = Path(self.data_root)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def params(self, section: str | None = None, config: dg.Config | None = None) -> dict[str, Any]:
        """params.yaml (read now, so edits apply to the next run) with the run's settings
        and, when given, the asset's Config overriding ``section``."""
        base = deep_merge(load_params(), {"profile": self.profile, "seed": self.seed, "chunk_size": self.chunk_size})
        if section and config is not None:
            base = deep_merge(base, {section: config.model_dump()})
        return base


def _d(section: str, key: str, default: Any = None) -> Any:
    return (PARAMS.get(section) or {}).get(key, default)


class SourceConfig(dg.Config):
    """Which images to ingest (``source`` in params.yaml)."""
    kind: str = _d("source", "kind", "sample")
    path: Optional[str] = _d("source", "path")


class IngestConfig(dg.Config):
    """Ingestion parameters (``ingest`` in params.yaml)."""
    source: SourceConfig = SourceConfig()
    resolution: int = _d("ingest", "resolution", 256)
    min_size: int = _d("ingest", "min_size", 64)


class DepthConfig(dg.Config):
    """Depth estimation (``depth`` in params.yaml)."""
    model: Optional[str] = _d("depth", "model")
    local_dir: Optional[str] = _d("depth", "local_dir")
    batch_size: int = _d("depth", "batch_size", 8)
    near: float = _d("depth", "near", 0.5)
    far: float = _d("depth", "far", 100.0)
    min_disparity: float = _d("depth", "min_disparity", 1e-3)


class WarpConfig(dg.Config):
    """IVID forward-backward warping (``warp`` in params.yaml)."""
    views_per_image: int = _d("warp", "views_per_image", 4)
    fov_deg: float = _d("warp", "fov_deg", 45.0)
    yaw_std: float = _d("warp", "yaw_std", 0.15)
    pitch_std: float = _d("warp", "pitch_std", 0.15)
    radius_std: float = _d("warp", "radius_std", 0.1)
    center_std: float = _d("warp", "center_std", 0.05)
    supersample: int = _d("warp", "supersample", 3)
    min_coverage: Optional[int] = _d("warp", "min_coverage", 7)
    edge_threshold: float = _d("warp", "edge_threshold", 0.02)
    prewarp_noise: float = _d("warp", "prewarp_noise", 0.005)
    blur_p: float = _d("warp", "blur_p", 0.8)
    blur_kernel: int = _d("warp", "blur_kernel", 3)
    erode_sizes: list[int] = _d("warp", "erode_sizes", [1, 3, 5, 7, 9])
    padding: float = _d("warp", "padding", 2.0)
    batch_size: int = _d("warp", "batch_size", 16)
    workers: Optional[int] = _d("warp", "workers")   # None = auto (pipelines.stages.warp.resolve_workers)


class FeaturesConfig(dg.Config):
    """DINOv2 features (``features`` in params.yaml)."""
    model: str = _d("features", "model", "vit_small_patch14_dinov2.lvd142m")
    local_path: Optional[str] = _d("features", "local_path")
    image_size: int = _d("features", "image_size", 224)
    batch_size: int = _d("features", "batch_size", 16)
    flipped: bool = _d("features", "flipped", True)


class PoseConfig(dg.Config):
    """Pose clustering (``pose`` in params.yaml)."""
    num_parts: int = _d("pose", "num_parts", 8)
    num_poses: int = _d("pose", "num_poses", 12)
    max_points: int = _d("pose", "max_points", 200000)
    location_weight: float = _d("pose", "location_weight", 1.0)
    visibility_threshold: float = _d("pose", "visibility_threshold", 0.02)
    outlier_percentile: float = _d("pose", "outlier_percentile", 95.0)
    all_foreground: bool = _d("pose", "all_foreground", False)
    restarts: int = _d("pose", "restarts", 5)
    niter: int = _d("pose", "niter", 25)
    location_frame: str = _d("pose", "location_frame", "object")
    num_threads: Optional[int] = _d("pose", "num_threads")


class ShardsConfig(dg.Config):
    """WebDataset shards (``shards`` in params.yaml)."""
    maxcount: int = _d("shards", "maxcount", 1000)
    maxsize: int = int(_d("shards", "maxsize", 1_000_000_000))
    split_fractions: dict[str, float] = _d("shards", "split_fractions", {"train": 0.9, "val": 0.05, "test": 0.05})
