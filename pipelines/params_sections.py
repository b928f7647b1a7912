"""The params section models: one typed pydantic (v2) model per ``params.yaml`` section,
with every parameter's default, description and validation rule (the one home of each).
Validation, loading and hashing live in :mod:`pipelines.params_schema`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.sources import SOURCE_KINDS

#: profiles; demo/smoke may fall back to tiny random models and apply ``small_profile``
PROFILES = ("default", "demo", "smoke")
SMALL_PROFILES = ("demo", "smoke")
EVAL_PROTOCOLS = ("generation", "novel_view", "view_sweep")
#: novel-view profiles of the ``nvs_reports`` asset (eval/nvs_protocols.py; reference 6.4)
NVS_PROFILES = ("co3d_challenge", "viewdiff_single_image", "viewset_single_view", "syncdreamer_ring")


def F(default: Any = None, description: str = "", *, results: bool = True, launchpad: bool = True,
      **constraints: Any) -> Any:
    """A schema field: ``results=False`` marks a key that never changes results (excluded
    from result hashes); ``launchpad=False`` keeps it out of the Dagster Config classes."""
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return Field(**kw, description=description, **constraints,
                 json_schema_extra={"affects_results": results, "launchpad": launchpad})


class _Rule(ValueError):
    """A cross-field rule broken by ``field`` of the model being validated."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceParams(_Section):
    """``source``: which images to ingest."""
    kind: Literal[SOURCE_KINDS] = F("sample", "sample: the photographs shipped in the scikit-image / scikit-learn "
                                    "wheels; folder: a folder, recursively; manifest: Parquet/CSV with a `path` "
                                    "column and optional `label`, `split`")
    path: Optional[str] = F(None, "the folder or manifest (needed when kind is folder or manifest)")

    @model_validator(mode="after")
    def _path(self):
        if self.kind != "sample" and not self.path:
            raise _Rule("path", f"required when source.kind is {self.kind!r}")
        return self


class IngestParams(_Section):
    """``ingest``: decoding, centre crop, resize."""
    resolution: int = F(256, "output side in pixels (square centre crop, LANCZOS resize)", ge=8)
    min_size: int = F(64, "images whose short side is smaller (pixels) are quarantined", ge=1)


class DepthParams(_Section):
    """``depth``: monocular depth (Depth Anything V2 through transformers)."""
    model: Optional[str] = F("depth-anything/Depth-Anything-V2-Small-hf", "transformers hub id (cached or "
                             "reachable); null = only depth.local_dir")
    local_dir: Optional[str] = F(None, "local checkpoint directory (save_pretrained layout); tried first")
    batch_size: int = F(8, "images per forward pass", results=False, ge=1)
    near: float = F(0.5, "IVID near plane: disparity is scaled so that depth >= near (scene units)", gt=0)
    far: float = F(100.0, "IVID z-buffer far plane (uint16 depth encoding), > near", gt=0)
    min_disparity: float = F(1e-3, "disparity floor; depth <= 1/min_disparity", gt=0)

    @model_validator(mode="after")
    def _planes(self):
        if not self.near < self.far:
            raise _Rule("near", f"depth.near must be < depth.far (far = {self.far})")
        return self


def _odd(v: int, name: str) -> int:
    if v < 1 or v % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 1")
    return v


class WarpParams(_Section):
    """``warp``: IVID forward-backward warping pairs and their augmentation."""
    views_per_image: int = F(4, "novel views (training pairs) per image", ge=1)
    fov_deg: float = F(45.0, "camera field of view in degrees, along the shorter image side", gt=0, lt=180)
    yaw_std: float = F(0.15, "novel-camera yaw standard deviation (rad)", ge=0)
    pitch_std: float = F(0.15, "novel-camera pitch standard deviation (rad)", ge=0)
    radius_std: float = F(0.1, "relative standard deviation of the camera distance", ge=0)
    center_std: float = F(0.05, "look-at centre jitter, relative to the scene depth", ge=0)
    supersample: int = F(3, "sub-pixels per side of the warping rasteriser", ge=1, le=16)
    min_coverage: Optional[int] = F(7, "covered sub-pixels (of supersample^2) for a valid target pixel; "
                                    "null = IVID's 0.75 rule", ge=1)
    edge_threshold: float = F(0.02, "relative depth / disparity jump that marks a discontinuity", ge=0)
    prewarp_noise: float = F(0.005, "max standard deviation of the RGBD noise added before warping", ge=0)
    blur_p: float = F(0.8, "probability of blurring the condition image", ge=0, le=1)
    blur_kernel: int = F(3, "Gaussian blur kernel side (odd)", ge=1)
    erode_sizes: list[int] = F(lambda: [1, 3, 5, 7, 9], "texture-erosion kernel sides, one drawn per pair (odd)",
                               min_length=1)
    padding: Optional[float] = F(None, "forward-pass mesh padding in pixels; null = the image size, as IVID "
                                 "(2 px differs on ~0.02% of mask pixels at large pitch; no measurable cost)", ge=0)
    batch_size: int = F(16, "pairs warped at once per process", results=False, ge=1)

    @field_validator("blur_kernel")
    @classmethod
    def _kernel(cls, v: int) -> int:
        return _odd(v, "blur_kernel")

    @field_validator("erode_sizes")
    @classmethod
    def _erode(cls, v: list[int]) -> list[int]:
        return [_odd(s, "each erode size") for s in v]

    @model_validator(mode="after")
    def _coverage(self):
        if self.min_coverage is not None and self.min_coverage > self.supersample ** 2:
            raise _Rule("min_coverage", f"must be <= warp.supersample**2 = {self.supersample ** 2}")
        return self


class FeaturesParams(_Section):
    """``features``: DINOv2 (timm) patch and CLS tokens."""
    model: str = F("vit_small_patch14_dinov2.lvd142m", "timm DINOv2 model name (cached or reachable hub)")
    local_path: Optional[str] = F(None, "local checkpoint file (.safetensors / .pth); tried first")
    image_size: int = F(224, "input side in pixels, a multiple of 14 (the patch size)", ge=14, multiple_of=14)
    batch_size: int = F(16, "images per forward pass", results=False, ge=1)
    flipped: bool = F(True, "also keep the features of the horizontally mirrored image")


class PoseParams(_Section):
    """``pose``: MIRAGE part discovery and FAISS k-means pose clustering."""
    num_parts: int = F(8, "DINOv2 parts (k-means clusters of foreground patch tokens)", ge=1)
    num_poses: int = F(12, "pose clusters", ge=1)
    max_points: int = F(200000, "patch tokens sampled for part discovery", ge=1)
    location_weight: float = F(1.0, "weight of the part locations against part visibility", ge=0)
    visibility_threshold: float = F(0.02, "part visibility below which its location is zeroed", ge=0, le=1)
    outlier_percentile: float = F(95.0, "images farther from their pose centroid than this percentile are "
                                  "outliers (100 = none)", gt=0, le=100)
    all_foreground: bool = F(False, "treat every patch as foreground")
    restarts: int = F(5, "k-means restarts (best inertia kept)", ge=1)
    niter: int = F(25, "k-means iterations", ge=1)
    location_frame: Literal["object", "image"] = F("object", "part locations relative to the foreground "
                                                   "(object) or to the image")
    num_threads: Optional[int] = F(None, "faiss OpenMP threads (null = all cores)", results=False, ge=1)


class ShardsParams(_Section):
    """``shards``: WebDataset tars and their manifest."""
    maxcount: int = F(1000, "samples per shard at most", ge=1)
    maxsize: int = F(1_000_000_000, "bytes per shard at most", ge=1)
    split_fractions: dict[str, float] = F(lambda: {"train": 0.9, "val": 0.05, "test": 0.05},
                                          "split name ([A-Za-z0-9_]+) -> fraction >= 0; fractions sum to 1")
    min_kept_fraction: float = F(0.5, "refuse to publish a shard set that keeps less than this fraction of the "
                                 "current manifest's samples (lost more than 1 - this) unless shards.allow_shrink "
                                 "is true", results=False, ge=0, le=1)
    allow_shrink: bool = F(False, "publish a shard set even when it lost more samples than "
                           "shards.min_kept_fraction allows", results=False)

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [n for n in v if not n or not n.replace("_", "").isalnum() or not n.isascii()]
        if not v or bad:
            raise ValueError(f"needs at least one split, names [A-Za-z0-9_]+ (bad: {bad})")
        if any(f < 0 for f in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be >= 0 and sum to 1 (they sum to {sum(v.values()):g})")
        return v


class ViewsetSourceParams(_Section):
    """``viewset_source``: which posed multi-view sequences to ingest (issue 14,
    :mod:`pipelines.viewsets`)."""
    root: Optional[str] = F(None, "source root: CO3D root, SyncDreamer training_examples or GSO folder, SRN split "
                            "dir, a folder of transforms.json / COLMAP workspaces; null = no viewsets")
    format: str = F("co3d", "reader: co3d | transforms_json | colmap | syncdreamer | srn (pipelines/viewsets/formats)")
    options: dict[str, Any] = F(dict, "format-specific list_sequences / load_viewset options (e.g. load_depth: false)")
    categories: Optional[list[str]] = F(None, "CO3D categories (null = all)")
    subset: Optional[str] = F(None, "CO3D set list (e.g. fewview_dev): its frames and splits; null = every frame")
    min_views: int = F(2, "sequences with fewer valid views are quarantined", ge=1)


class ViewsetsParams(_Section):
    """``viewsets``: object crop, resize and canonical frame of each sequence."""
    crop_context: float = F(0.3, "crop = mask bbox grown by this fraction (PyTorch3D box_crop_context)", ge=0)
    crop_threshold: float = F(0.4, "alpha threshold of the mask bbox (PyTorch3D box_crop_mask_thr)", ge=0, le=1)
    crop_square: bool = F(False, "square crops (side = the larger bbox side, clamped to the image)")
    min_short_side: int = F(512, "stored views: crop short side brought down to this (smaller crops kept)", ge=8)
    bbox_percentile: float = F(0.0, "robust object AABB: trim this percentage per axis and end", ge=0, lt=50)
    chunk_sequences: int = F(4, "sequences per cache chunk (bounds peak memory)", results=False, ge=1)


class ViewsetShardsParams(_Section):
    """``viewset_shards``: viewset WebDataset tars and their manifest."""
    split_fractions: dict[str, float] = F(lambda: {"train": 0.9, "val": 0.05, "test": 0.05},
                                          "hash split of sequences without a source split; names [A-Za-z0-9_]+")
    use_source_splits: bool = F(True, "a sequence's set-list / directory split (CO3D subset, SRN cars_<split>) "
                                "wins over the hash split when it names one of split_fractions")
    maxcount: int = F(100, "sequences per shard at most", ge=1)
    maxsize: int = F(1_000_000_000, "bytes per shard at most", ge=1)
    min_kept_fraction: float = F(0.5, "refuse to publish a set keeping less than this fraction of the current "
                                 "manifest's sequences unless allow_shrink", results=False, ge=0, le=1)
    allow_shrink: bool = F(False, "publish even when the set shrank more than min_kept_fraction allows",
                           results=False)

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        return ShardsParams._fractions(v)     # the same rule as shards.split_fractions


class _Small(_Section):
    """A section with ``small_profile``: values applied in profiles demo/smoke."""

    @model_validator(mode="after")
    def _small(self):
        sp = dict(self.small_profile)
        if not sp:
            return self
        bad = sorted(set(sp) - set(type(self).model_fields) | ({"small_profile"} & set(sp)))
        if bad:
            raise _Rule("small_profile", f"unknown keys {bad}")
        try:
            type(self).model_validate({**self.model_dump(), **apply_small(self, sp), "small_profile": {}})
        except ValidationError as e:
            first = e.errors()[0]
            raise _Rule("small_profile", f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        return self


class EvalParams(_Small):
    """``eval``: IVID / MIRAGE / ViewDiff evaluation protocols."""
    split: str = F("test", "shard split evaluated")
    resolution: int = F(128, "evaluation image side (IVID: 128)", ge=8)
    protocols: list[Literal[EVAL_PROTOCOLS]] = F(lambda: list(EVAL_PROTOCOLS), "protocols to run", min_length=1)
    num_samples: int = F(10000, "generation: generated samples", ge=1)
    max_real: Optional[int] = F(None, "cap on real images (null = the whole split)", ge=1)
    num_pairs: Optional[int] = F(1000, "novel view: held-out pairs (null = all)", ge=1)
    sweep_viewsets: int = F(100, "view sweep: viewsets (27 views each on the IVID grid)", ge=1)
    sweep_yaws: Optional[list[float]] = F(None, "view sweep yaws in rad (null = IVID 3x9 grid)")
    sweep_pitches: Optional[list[float]] = F(None, "view sweep pitches in rad (null = IVID 3x9 grid)")
    batch_size: int = F(32, "samples per generation batch (the batch index seeds the noise)", ge=1)
    sweep_batch_size: int = F(4, "viewsets per view-sweep batch (the batch index seeds the noise)", ge=1)
    seed: int = F(0, "evaluation seed", ge=0)
    ddim_steps: int = F(50, "DDIM sampling steps", ge=1)
    guidance_scale: float = F(1.0, "classifier-free guidance scale (1 = none)", ge=0)
    kid_subsets: int = F(100, "KID subsets", ge=1)
    kid_subset_size: int = F(1000, "KID subset size", ge=1)
    feature_extractor_weights_path: Optional[str] = F(None, "torch-fidelity Inception weights file "
                                                      "(weights-inception-2015-12-05-6726825d.pth)")
    fd_dinov2: bool = F(True, "also report FD-DINOv2")
    dinov2_model: Optional[str] = F(None, "timm DINOv2 for FD-DINOv2 (null = features.model)")
    dinov2_local_path: Optional[str] = F(None, "its local checkpoint (null = features.local_path)")
    dinov2_image_size: int = F(224, "FD-DINOv2 input side (multiple of 14)", ge=14, multiple_of=14)
    lpips_net: Literal["alex", "vgg", "squeeze"] = F("alex", "LPIPS backbone")
    lpips_weights_path: Optional[str] = F(None, "torchvision backbone state dict for LPIPS (else LPIPS is "
                                          "skipped, and the report says so)")
    first_view_model: str = F("first_view", "first-view model: a run, checkpoint or model directory under the "
                              "models directory")
    novel_view_model: str = F("novel_view", "novel-view model, same forms")
    weights: Literal["ema", "model"] = F("ema", "which weights of a checkpoint: EMA or raw")
    small_profile: dict[str, Any] = F(lambda: {"num_samples": 8, "max_real": 64, "num_pairs": 8, "sweep_viewsets": 1,
                                               "ddim_steps": 4, "kid_subsets": 10, "split": "train",
                                               "resolution": 32},
                                      "profiles demo/smoke: numbers capped to these values, others replaced",
                                      launchpad=False)


class TrainParams(_Small):
    """``train``: the IVID first-view and novel-view diffusion models."""
    config: str = F("base", "training/configs/<name>.yaml or a path to a YAML config")
    max_steps: Optional[int] = F(None, "training steps (null = the config's train.max_steps)", ge=1)
    first_view_class_cond: Literal["none", "pose", "label"] = F("none", "first-view class conditioning: none, "
                                                                "pose (MIRAGE pose clusters) or label")
    init_novel_from_first: bool = F(True, "the novel-view model starts from the first-view weights (IVID)")
    first_view: list[str] = F(list, "extra dotted overrides of the first-view config, e.g. train.batch_size=64")
    novel_view: list[str] = F(list, "extra dotted overrides of the novel-view config")
    small_profile: dict[str, Any] = F(lambda: {"config": "tiny", "max_steps": 30},
                                      "profiles demo/smoke: numbers capped to these values, others replaced",
                                      launchpad=False)


class ViewsetTrainParams(_Small):
    """``viewset_train``: the posed multi-view model trained on the viewset shards (issue 15)."""
    config: str = F("multiview_base", "training/configs/<name>.yaml (model: multiview) or a path to one")
    max_steps: Optional[int] = F(None, "training steps (null = the config's train.max_steps)", ge=1)
    overrides: list[str] = F(list, "extra dotted config overrides, e.g. data.adapter=viewset_diffusion")
    small_profile: dict[str, Any] = F(lambda: {"config": "multiview_tiny", "max_steps": 20},
                                      "profiles demo/smoke: numbers capped to these values, others replaced",
                                      launchpad=False)


class NvsEvalParams(_Small):
    """``nvs_eval``: novel-view protocols of the multi-view model (eval/nvs_protocols.py)."""
    split: str = F("test", "viewset shard split evaluated")
    profiles: list[Literal[NVS_PROFILES]] = F(lambda: list(NVS_PROFILES), "protocol profiles to run (a profile "
                                              "the data cannot serve, e.g. a ring on non-ring sources, is reported "
                                              "as skipped with the reason)", min_length=1)
    resolution: Optional[int] = F(None, "image side for every profile (null = each profile's own: 256 / 128)", ge=8)
    n_samples: Optional[int] = F(None, "samples per condition (null = each profile's own: 20, SyncDreamer 1)", ge=1)
    ddim_steps: int = F(50, "DDIM steps of the sampler", ge=1)
    max_sequences: Optional[int] = F(100, "sequences per profile at most (null = the whole split)", ge=1)
    num_pairs: int = F(100, "viewset_single_view: fixed (condition, target) pairs", ge=1)
    seed: int = F(0, "seed of the stored view selections and of the sampler noise", ge=0)
    lpips_weights_path: Optional[str] = F(None, "torchvision VGG16 state dict for LPIPS-VGG (else LPIPS is "
                                          "skipped, and the report says so)")
    weights: Literal["ema", "model"] = F("ema", "which weights of the checkpoint: EMA or raw")
    small_profile: dict[str, Any] = F(lambda: {"resolution": 32, "n_samples": 2, "ddim_steps": 3,
                                               "max_sequences": 2, "num_pairs": 4, "split": "train"},
                                      "profiles demo/smoke: numbers capped to these values, others replaced",
                                      launchpad=False)


class ExecutionParams(_Section):
    """``execution``: where per-bucket work runs (speed only: never changes results)."""
    engine: Literal["local", "ray"] = F("local", "local: in the Dagster run's process; ray: fan buckets out to "
                                        "a Ray cluster", results=False)
    address: Optional[str] = F(None, "Ray cluster address (null = start a private local cluster)", results=False)
    num_cpus: Optional[int] = F(None, "CPUs to use (null = all)", results=False, ge=1)
    num_gpus_per_actor: float = F(1.0, "GPUs per Ray GPU actor (fractions share a GPU)", results=False, ge=0)


class ViewforgeParams(_Section):
    """The whole ``params.yaml``."""
    seed: int = F(0, "global seed; every random choice is seeded from (sample key, seed)", ge=0)
    profile: Literal[PROFILES] = F("default", "default | demo | smoke: demo/smoke fall back to tiny random models "
                                   "when weights cannot be resolved and use small_profile counts")
    chunk_size: int = F(256, "samples per chunk; bounds peak memory", results=False, ge=1)
    num_buckets: int = F(256, "static key-prefix buckets = Dagster partitions; demo/smoke profiles use 16")
    source: SourceParams = F(SourceParams, "which images to ingest")
    ingest: IngestParams = F(IngestParams, "ingestion")
    depth: DepthParams = F(DepthParams, "monocular depth")
    warp: WarpParams = F(WarpParams, "IVID warping pairs")
    features: FeaturesParams = F(FeaturesParams, "DINOv2 features")
    pose: PoseParams = F(PoseParams, "pose clustering")
    shards: ShardsParams = F(ShardsParams, "WebDataset shards")
    viewset_source: ViewsetSourceParams = F(ViewsetSourceParams, "posed multi-view sources")
    viewsets: ViewsetsParams = F(ViewsetsParams, "viewset crop and canonical frame")
    viewset_shards: ViewsetShardsParams = F(ViewsetShardsParams, "viewset WebDataset shards")
    eval: EvalParams = F(EvalParams, "evaluation")
    train: TrainParams = F(TrainParams, "training")
    viewset_train: ViewsetTrainParams = F(ViewsetTrainParams, "multi-view model training on viewset shards")
    nvs_eval: NvsEvalParams = F(NvsEvalParams, "novel-view evaluation of the multi-view model")
    execution: ExecutionParams = F(ExecutionParams, "execution engine (speed only)", results=False)

    @model_validator(mode="before")
    @classmethod
    def _null_sections(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            sections = {k for k, f in cls.model_fields.items()
                        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
            data = {k: ({} if v is None and k in sections else v) for k, v in data.items()}
        return data

    @field_validator("num_buckets")
    @classmethod
    def _buckets(cls, v: int) -> int:
        from pipelines.buckets import bucket_digits

        try:
            bucket_digits(v)
        except ValueError:
            raise ValueError("must be a power of 16 (1, 16, 256, 4096 or 65536)") from None
        return v


def apply_small(section: Any, small: Mapping[str, Any]) -> dict[str, Any]:
    """``small`` applied to a section (dict or model): numbers are capped (``min``),
    other values (strings, null, lists) replaced. Returns the changed keys only."""
    cur = section.model_dump() if isinstance(section, BaseModel) else dict(section)
    num = (int, float)
    return {k: (min(cur[k], v) if isinstance(v, num) and isinstance(cur.get(k), num)
                and not isinstance(v, bool) and not isinstance(cur.get(k), bool) else v)
            for k, v in small.items()}
