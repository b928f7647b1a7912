"""Fan the buckets of a stage out to an execution engine: in-process, or Ray.

``params['execution']`` selects the engine (``params.yaml``)::

    execution: {engine: local | ray, address: null, num_cpus: null, num_gpus_per_actor: 1.0}

* ``local``: the buckets run one after another in this process; a model (depth, DINOv2)
  is loaded once, on first need, and shared by all buckets.
* ``ray``: ``ray.init(address)`` joins an existing cluster (``ray://...``, ``auto``, a
  KubeRay head) or, with no address, starts a private local cluster once per process.
  CPU stages run one Ray task per bucket; model stages run in Ray actors that load the
  model once and take buckets from a ``ray.util.ActorPool``: one actor per GPU
  (``num_gpus=num_gpus_per_actor``) when the cluster has GPUs, else one per CPU (at most
  one per bucket). Ray places tasks and actors, assigns GPUs (``CUDA_VISIBLE_DEVICES``)
  and retries tasks whose worker died (its default ``max_retries``); an *exception* in a
  bucket is not retried: it becomes that bucket's error and the other buckets go on.

Results do not depend on the engine: every bucket is computed from its own inputs only.
Nothing here schedules, retries or assigns devices by itself (see scale-notes §4.5).
"""
from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

log = logging.getLogger("viewforge")

@dataclass
class BucketOutcome:
    """What one bucket produced: ``report`` (a :class:`pipelines.stages.common.StageReport`)
    or ``error`` (a one-line reason) and ``detail`` (traceback text)."""
    bucket: str
    report: Any = None
    error: str | None = None
    detail: str = ""


@dataclass
class BucketJob:
    """A picklable unit of work: run ``fn(bucket, get_resource)`` for one bucket.

    ``fn`` must be a module-level function (Ray pickles it by reference); ``make_resource``
    (optional, module-level) builds the shared model, called at most once per process or actor.
    """
    fn: Callable[[str, Callable[[], Any]], Any]
    make_resource: Callable[[], Any] | None = None
    gpu: bool = False
    _resource: list = field(default_factory=list, repr=False)

    def resource(self) -> Any:
        if self.make_resource is None:
            return None
        if not self._resource:
            self._resource.append(self.make_resource())
        return self._resource[0]

    def __call__(self, bucket: str) -> BucketOutcome:
        try:
            return BucketOutcome(bucket, report=self.fn(bucket, self.resource))
        except Exception as e:  # noqa: BLE001 - one bucket's failure never stops the others
            log.exception("bucket %s failed", bucket)
            return BucketOutcome(bucket, error=f"{type(e).__name__}: {e}", detail=traceback.format_exc())


def execution_config(params: dict[str, Any]) -> dict[str, Any]:
    """``params['execution']`` validated and completed with the schema's defaults
    (:class:`pipelines.params_sections.ExecutionParams`).

    Raises:
        pipelines.params_schema.ParamsError: an unknown engine or invalid value.
    """
    from pipelines.params_schema import validate_section

    return validate_section("execution", params.get("execution"))


def run_buckets(job: BucketJob, buckets: Sequence[str], params: dict[str, Any],
                progress: Callable[[BucketOutcome], None] | None = None) -> list[BucketOutcome]:
    """Run ``job`` on every bucket with the configured engine; outcomes in bucket order."""
    cfg = execution_config(params)
    buckets = list(buckets)
    if cfg["engine"] == "ray" and buckets:
        outcomes = _run_ray(job, buckets, cfg, progress)
    else:
        outcomes = []
        for b in buckets:
            outcomes.append(job(b))
            if progress:
                progress(outcomes[-1])
    return sorted(outcomes, key=lambda o: o.bucket)


def run_map(fn: Callable[..., Any], args: Sequence[tuple], params: dict[str, Any]) -> list[Any]:
    """``[fn(*a) for a in args]`` with the configured engine: in-process, or one Ray task per
    argument tuple (``fn`` module-level). Results in argument order; an exception propagates
    (for pure, cheap per-chunk work such as hashing, not for buckets: see :func:`run_buckets`)."""
    cfg = execution_config(params)
    if cfg["engine"] != "ray" or len(args) < 2:
        return [fn(*a) for a in args]
    import ray

    ray_init(cfg)
    task = ray.remote(num_cpus=1)(fn)
    return ray.get([task.remote(*a) for a in args])


def ray_init(cfg: dict[str, Any]) -> None:
    """Connect to (or start) the Ray cluster of ``cfg`` once per process.

    With ``address`` set, joins that cluster (Ray 2.60 clusters use token auth: set
    ``RAY_AUTH_MODE=token`` and the token as Ray documents, else the client retries
    silently). Without it, starts a private local cluster (no dashboard) sized by
    ``num_cpus`` (default: all cores).

    Raises:
        ImportError: Ray is not installed (``pip install -e '.[distributed]'``).
    """
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("execution.engine is 'ray' but Ray is not installed: "
                          "pip install -e '.[distributed]'") from e
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                              "logging_level": logging.WARNING}
    if cfg.get("address"):
        kwargs["address"] = cfg["address"]
    else:
        kwargs.update(include_dashboard=False, num_cpus=cfg.get("num_cpus") or os.cpu_count())
    ray.init(**kwargs)


class _Actor:
    """Ray actor body: holds one :class:`BucketJob` (and so one loaded model)."""

    def __init__(self, job: BucketJob):
        self.job = job

    def run(self, bucket: str) -> BucketOutcome:
        return self.job(bucket)


def _call(job: BucketJob, bucket: str) -> BucketOutcome:
    return job(bucket)


def _run_ray(job: BucketJob, buckets: list[str], cfg: dict[str, Any],
             progress: Callable[[BucketOutcome], None] | None) -> list[BucketOutcome]:
    import ray
    from ray.util import ActorPool

    ray_init(cfg)
    outcomes: list[BucketOutcome] = []
    if job.make_resource is None:
        task = ray.remote(num_cpus=1)(_call)
        refs = {task.remote(job, b): b for b in buckets}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ref = done[0]
            try:
                out = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - worker died after Ray's retries
                out = BucketOutcome(refs[ref], error=f"{type(e).__name__}: {e}")
            outcomes.append(out)
            if progress:
                progress(out)
        return outcomes
    gpus = float(ray.cluster_resources().get("GPU", 0))
    per = float(cfg.get("num_gpus_per_actor") or 1.0)
    if job.gpu and gpus > 0:
        n, opts = max(1, int(gpus // per)), {"num_gpus": per}
    else:
        n, opts = max(1, int(ray.cluster_resources().get("CPU", 1))), {"num_cpus": 1}
    n = min(n, len(buckets))
    actor_cls = ray.remote(_Actor)
    actors = [actor_cls.options(**opts).remote(job) for _ in range(n)]
    pool = ActorPool(actors)
    for b in buckets:
        pool.submit(lambda a, bucket: a.run.remote(bucket), b)
    while pool.has_next():
        try:
            out = pool.get_next_unordered()
        except Exception as e:  # noqa: BLE001 - actor died
            out = BucketOutcome("?", error=f"{type(e).__name__}: {e}")
        outcomes.append(out)
        if progress:
            progress(out)
    for a in actors:
        ray.kill(a)
    return outcomes
