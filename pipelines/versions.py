"""Code versions of the stages, in one place.

Bump a stage's version when a change alters its results: its stored per-sample results
stop matching (:func:`pipelines.config.stage_version`) and the stage, and everything
downstream, recomputes. The Dagster assets use the same strings as ``code_version``.
"""
LISTING = "listing-1"
IMAGES = "images-2"
DEPTH = "depth-1"
WARP = "warp-2"
FEATURES = "features-1"
POSE = "pose-1"
SHARDS = "shards-2"
TRAIN = "train-1"
EVAL = "eval-1"
VIEWSET_SOURCES = "viewset-sources-1"
VIEWSETS = "viewsets-1"
VIEWSET_SHARDS = "viewset-shards-1"
VIEWSET_TRAIN = "viewset-train-1"
NVS_EVAL = "nvs-eval-1"
