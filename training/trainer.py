"""Trainer for the RGBD diffusion models: one process or ``torchrun`` DDP, exact resume.

* Distributed: launched by ``torchrun`` (env ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``),
  NCCL on CUDA, gloo on CPU; gradients averaged by ``DistributedDataParallel``.
* Precision: fp32 weights, bf16 autocast on CUDA (``mixed_precision: auto|bf16|no``).
* Optimiser: AdamW (lr 1e-4, IVID weight decay 0), constant LR after linear warm-up
  (diffusers ``get_scheduler``), gradient accumulation, optional grad-norm clipping,
  EMA 0.9999 (diffusers ``EMAModel``).
* Exact resume: every random draw of a step (timesteps, noise, CFG drop, condition
  noise) comes from a generator seeded by ``(seed, rank, step, micro-batch)``; the data
  stream is a sequence of *segments*, each a fresh ``make_dataset`` pipeline seeded by
  ``(seed, rank, segment)`` (``segment_steps`` steps when ``resampled``, one epoch
  otherwise), and a checkpoint stores every rank's ``(segment, batches consumed)``. On
  resume the segment is rebuilt and the consumed batches skipped, so ``2N`` steps
  straight and ``N`` + resume + ``N`` give the same weights up to float reduction order.
* Checkpoints (``out/checkpoints/step_XXXXXXXX/``, written atomically): ``model/`` and
  ``ema/`` in diffusers ``save_pretrained`` layout (safetensors), ``optimizer.pt``
  (optimizer, LR scheduler, EMA counters), ``state.json`` (step, seed, data positions,
  configs), ``rng.pt``; ``out/checkpoints/latest`` names the newest.
* Logs: ``out/logs/train.csv`` and TensorBoard ``out/logs/tb`` (loss, lr, samples/s),
  tqdm bar on rank 0, optional ``progress_callback(dict)`` (used by Dagster Pipes).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from .diffusion import (DiffusionConfig, class_labels_from_batch, diffusion_loss, make_ddpm_scheduler,
                        make_ema, model_inputs)
from .models import ModelConfig, NOVEL_VIEW, build_model, config_from_dict, init_novel_from_first_view, load_model

log = logging.getLogger("viewforge.training")


@dataclass
class TrainConfig:
    """Optimisation, data and bookkeeping settings (per process unless noted)."""
    batch_size: int = 8            # micro-batch per process
    grad_accum: int = 1            # micro-batches per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_steps: int = 1000
    grad_clip: float = 1.0         # max grad norm; 0 disables
    mixed_precision: str = "auto"  # auto (bf16 on CUDA) | bf16 | no
    seed: int = 0
    split: str = "train"
    shuffle_buffer: int = 1000
    resampled: bool = True         # infinite resampled shards (else epochs)
    segment_steps: int = 1000      # optimizer steps per data segment when resampled
    num_workers: int = 0           # DataLoader workers per process
    log_every: int = 10
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    init_from: str | None = None   # first-view model dir (or checkpoint) for a novel-view model

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return config_from_dict(cls, d, "train")


def _seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and runs)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group when ``WORLD_SIZE > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local % max(torch.cuda.device_count(), 1)}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, device


class DataStream:
    """Resumable batch stream over shards; position = ``(segment, batches consumed)``.

    Each segment is ``training.data.make_dataset(shards, split, batch_size=...,
    shuffle_buffer=..., seed=_seed(seed, "data", segment), resampled=...)`` read through a
    ``DataLoader`` (``batch_size=None``). The seed is the same on every rank: ``make_dataset``
    mixes rank and worker into its resampling/shuffle seeds itself, and its exact-once
    mode needs one shard permutation for all ranks. Resampled: a segment lasts
    ``segment_batches`` batches (ranks draw shards independently, with replacement);
    otherwise it is one pass over this rank's disjoint shards (``split_by_node``), and a
    rank that finishes its pass starts the next segment on its own (no DDP hang).
    """

    def __init__(self, shards: Any, *, split: str, batch_size: int, seed: int, rank: int,
                 resampled: bool, shuffle_buffer: int, segment_batches: int, num_workers: int,
                 make_dataset: Callable[..., Any] | None = None):
        self.make_dataset = make_dataset   # None: training.data.make_dataset (a task may supply its own)
        self.shards, self.split, self.batch_size, self.seed, self.rank = shards, split, batch_size, seed, rank
        self.resampled, self.shuffle_buffer = resampled, shuffle_buffer
        self.segment_batches, self.num_workers = segment_batches, num_workers
        self.segment, self.consumed = 0, 0
        self._it: Iterator | None = None

    def _open(self, skip: int) -> None:
        from .data import make_dataset
        ds = (self.make_dataset or make_dataset)(self.shards, self.split, batch_size=self.batch_size,
                          shuffle_buffer=self.shuffle_buffer, seed=_seed(self.seed, "data", self.segment),
                          resampled=self.resampled)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.num_workers)
        self._it = iter(loader)
        for _ in range(skip):
            next(self._it)

    def __next__(self) -> dict[str, Any]:
        for _ in range(3):
            if self.resampled and self.consumed >= self.segment_batches:
                self.segment, self.consumed, self._it = self.segment + 1, 0, None
            if self._it is None:
                self._open(self.consumed)
            try:
                batch = next(self._it)
            except StopIteration:  # end of an epoch
                if self.consumed == 0:
                    raise RuntimeError(f"split {self.split!r} yields no batch for rank {self.rank}")
                self.segment, self.consumed, self._it = self.segment + 1, 0, None
                continue
            self.consumed += 1
            return batch
        raise RuntimeError("data stream yields nothing")

    def state_dict(self) -> dict[str, int]:
        return {"segment": self.segment, "consumed": self.consumed}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.segment, self.consumed, self._it = int(d["segment"]), int(d["consumed"]), None


def _open_csv_log(path: Path, step: int) -> Any:
    """Open ``train.csv`` for appending after dropping rows with ``step >`` the resumed step
    (a run that died after logging past its last checkpoint re-logs those steps; as
    TensorBoard's ``purge_step``), writing the header to a new file."""
    rows: list[list[str]] = []
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    keep = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
    if not rows or len(keep) != len(rows) - 1:
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([["step", "loss", "lr", "samples_per_s", "elapsed_s"], *keep])
        os.replace(tmp, path)
    return open(path, "a", newline="")


class Trainer:
    """Builds model, optimiser, EMA and logging; :meth:`train` runs the loop.

    Args:
        model_cfg / diffusion_cfg / train_cfg: configuration dataclasses.
        shards: manifest path, shard directory or manifest dict (``make_dataset``).
        out_dir: run directory (checkpoints, logs).
        progress_callback: called on rank 0 with ``{"event": "log"|"checkpoint", "step",
            "max_steps", "loss", "lr", "samples_per_s", "elapsed_s"}`` (+ ``"path"``).
        resume: ``"auto"`` (latest checkpoint in ``out_dir`` if any), a checkpoint
            directory, or None (start fresh).
        task: model-specific hook (build/load model, dataset, loss); None = the IVID models,
            or :class:`training.multiview_train.MultiViewTask` for ``kind == "multiview"``.
    """

    def __init__(self, model_cfg: ModelConfig, diffusion_cfg: DiffusionConfig, train_cfg: TrainConfig,
                 shards: Any, out_dir: str | os.PathLike, *,
                 progress_callback: Callable[[dict], None] | None = None, resume: str | None = "auto",
                 task: Any = None):
        self.mcfg, self.dcfg, self.tcfg = model_cfg, diffusion_cfg, train_cfg
        self.shards, self.out = shards, Path(out_dir)
        self.callback = progress_callback
        self.rank, self.world, self.device = init_distributed()
        torch.manual_seed(_seed(train_cfg.seed, "init"))  # identical init on every rank
        if task is None and model_cfg.kind == "multiview":
            from .multiview_train import MultiViewTask
            task = MultiViewTask()
        self.task = task
        self.model = (task.build_model if task else build_model)(model_cfg).to(self.device)
        if train_cfg.init_from:
            self._init_from(train_cfg.init_from)
        self.ema = make_ema(self.model, diffusion_cfg.ema_decay)
        self.scheduler = make_ddpm_scheduler(diffusion_cfg)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=train_cfg.lr,
                                           weight_decay=train_cfg.weight_decay)
        self.lr_scheduler = get_scheduler("constant_with_warmup", self.optimizer,
                                          num_warmup_steps=train_cfg.warmup_steps)
        self.ddp = (torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.world > 1 else None)
        mp = train_cfg.mixed_precision
        if mp not in ("auto", "bf16", "no"):
            raise ValueError(f"mixed_precision must be auto|bf16|no, got {mp!r}")
        self.autocast = mp == "bf16" or (mp == "auto" and self.device.type == "cuda")
        self.step = 0
        self.stream: DataStream | None = None
        self._data_states: list[dict] | None = None
        ck = latest_checkpoint(self.out) if resume == "auto" else resume
        if ck:
            self.load_checkpoint(ck)

    # ----------------------------------------------------------------- steps
    def _init_from(self, path: str) -> None:
        """Weights from a model dir, a checkpoint (its ``ema/``) or a run dir (latest checkpoint)."""
        p = Path(path)
        p = latest_checkpoint(p) or p
        src = (self.task.load_model if self.task else load_model)(p / "ema" if (p / "ema").is_dir() else p)
        if self.mcfg.kind == NOVEL_VIEW and src.config.kind != NOVEL_VIEW:
            init_novel_from_first_view(self.model, src.to(self.device))
        else:
            self.model.unet.load_state_dict(src.unet.state_dict())

    def _generator(self, micro: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(
            _seed(self.tcfg.seed, "step", self.rank, self.step, micro))

    def train_step(self, batches: list[dict[str, Any]]) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss."""
        net = self.ddp or self.model
        self.model.train()
        total = 0.0
        for micro, batch in enumerate(batches):
            if self.task is None:
                inputs = model_inputs(batch, self.mcfg.kind, self.device, self.mcfg.resolution)
                labels = class_labels_from_batch(batch, self.mcfg.class_cond, self.mcfg.num_classes, self.device)
            sync = self.ddp is None or micro == len(batches) - 1
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()), \
                    torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss = (self.task.loss(self.model, net, self.scheduler, batch, self.device, self._generator(micro))
                        if self.task else
                        diffusion_loss(net, self.scheduler, inputs, labels, p_uncond=self.dcfg.p_uncond,
                                       null_class=self.mcfg.null_class, generator=self._generator(micro)))
            (loss / len(batches)).backward()
            total += loss.item()
        if self.tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.model.parameters())
        self.step += 1
        return total / len(batches)

    def _mean(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def train(self, max_steps: int | None = None) -> dict[str, Any]:
        """Train until ``max_steps`` (default ``train_cfg.max_steps``) optimizer steps.

        Returns ``{"step", "loss" (mean of the last log interval), "samples_per_s",
        "checkpoint", "losses" (per-step list, this call, rank-local)}``.
        """
        t = self.tcfg
        max_steps = t.max_steps if max_steps is None else max_steps
        if self.stream is None:
            self.stream = DataStream(self.shards, split=t.split, batch_size=t.batch_size, seed=t.seed,
                                     rank=self.rank, resampled=t.resampled, shuffle_buffer=t.shuffle_buffer,
                                     segment_batches=t.segment_steps * t.grad_accum, num_workers=t.num_workers,
                                     make_dataset=self.task.dataset_factory(self.mcfg) if self.task else None)
            if self._data_states is not None:
                if len(self._data_states) == self.world:
                    self.stream.load_state_dict(self._data_states[self.rank])
                else:
                    log.warning("checkpoint has %d data positions, world size is %d: data restarts at a new "
                                "segment (resume is not exact)", len(self._data_states), self.world)
                    self.stream.load_state_dict({"segment": 1 + max(s["segment"] for s in self._data_states),
                                                 "consumed": 0})
        main = self.rank == 0
        writer = csv_file = None
        if main:
            (self.out / "logs").mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(self.out / "logs" / "tb"), purge_step=self.step)
            csv_file = _open_csv_log(self.out / "logs" / "train.csv", self.step)
            csv_w = csv.writer(csv_file)
        bar = tqdm(total=max_steps, initial=self.step, disable=not main, desc="train", dynamic_ncols=True)
        losses: list[float] = []
        window: list[float] = []
        t0 = t_win = time.perf_counter()
        win_samples, last = 0, {"loss": float("nan"), "samples_per_s": 0.0}
        ckpt = None
        try:
            while self.step < max_steps:
                batches = [next(self.stream) for _ in range(t.grad_accum)]
                loss = self.train_step(batches)
                losses.append(loss)
                window.append(loss)
                win_samples += sum(len(b["key"]) for b in batches)
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == max_steps:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    dt = time.perf_counter() - t_win
                    mean_loss = self._mean(sum(window) / len(window))
                    sps = self._mean(win_samples / max(dt, 1e-9)) * self.world
                    lr = self.lr_scheduler.get_last_lr()[0]
                    last = {"event": "log", "step": self.step, "max_steps": max_steps, "loss": mean_loss,
                            "lr": lr, "samples_per_s": sps, "elapsed_s": time.perf_counter() - t0}
                    if main:
                        writer.add_scalar("train/loss", mean_loss, self.step)
                        writer.add_scalar("train/lr", lr, self.step)
                        writer.add_scalar("train/samples_per_s", sps, self.step)
                        csv_w.writerow([self.step, f"{mean_loss:.6f}", f"{lr:.3e}", f"{sps:.3f}",
                                        f"{last['elapsed_s']:.2f}"])
                        csv_file.flush()
                        bar.set_postfix(loss=f"{mean_loss:.4f}", sps=f"{sps:.1f}")
                        if self.callback:
                            self.callback(dict(last))
                    window, win_samples, t_win = [], 0, time.perf_counter()
                if self.step % t.ckpt_every == 0 or self.step == max_steps:
                    ckpt = self.save_checkpoint()
                    if main and self.callback:
                        self.callback({**last, "event": "checkpoint", "step": self.step, "max_steps": max_steps,
                                       "path": str(ckpt)})
        finally:
            bar.close()
            if writer is not None:
                writer.close()
                csv_file.close()
        return {"step": self.step, "loss": last["loss"], "samples_per_s": last["samples_per_s"],
                "checkpoint": str(ckpt) if ckpt else None, "losses": losses}

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``out/checkpoints/step_XXXXXXXX`` (collective under DDP; rank 0 writes)."""
        data = [self.stream.state_dict()] if self.stream else [{"segment": 0, "consumed": 0}]
        rng = [{"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}]
        if self.world > 1:
            data_all: list = [None] * self.world
            rng_all: list = [None] * self.world
            dist.all_gather_object(data_all, data[0])
            dist.all_gather_object(rng_all, {k: (v.cpu() if v is not None else None) for k, v in rng[0].items()})
            data, rng = data_all, rng_all
        root = self.out / "checkpoints"
        final = root / f"step_{self.step:08d}"
        if self.rank == 0:
            tmp = root / f".{final.name}.tmp{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self.model.save_pretrained(tmp / "model")
            self.ema.store(self.model.parameters())
            self.ema.copy_to(self.model.parameters())
            self.model.save_pretrained(tmp / "ema")
            self.ema.restore(self.model.parameters())
            ema_state = {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
            torch.save({"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                        "ema": ema_state}, tmp / "optimizer.pt")
            torch.save(rng, tmp / "rng.pt")
            state = {"step": self.step, "seed": self.tcfg.seed, "world_size": self.world, "data": data,
                     "model": self.mcfg.to_dict(), "diffusion": self.dcfg.to_dict(), "train": asdict(self.tcfg),
                     **({"task": self.task.to_dict()} if self.task else {})}
            (tmp / "state.json").write_text(json.dumps(state, indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            latest_tmp = root / f".latest.tmp{os.getpid()}"
            latest_tmp.write_text(final.name)
            os.replace(latest_tmp, root / "latest")
            old = sorted(p for p in root.glob("step_*") if p.is_dir())
            for p in old[:-max(self.tcfg.keep_checkpoints, 1)]:
                shutil.rmtree(p, ignore_errors=True)
        if self.world > 1:
            dist.barrier()
        return final

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore weights, EMA, optimizer, LR scheduler, step, data positions and RNG."""
        p = Path(path)
        state = json.loads((p / "state.json").read_text())
        load = self.task.load_model if self.task else load_model
        self.model.unet.load_state_dict(load(p / "model").unet.state_dict())
        ema_sd = load(p / "ema").unet.state_dict()
        names = [n for n, _ in self.model.unet.named_parameters()]
        with torch.no_grad():
            for shadow, n in zip(self.ema.shadow_params, names):
                shadow.copy_(ema_sd[n])
        opt = torch.load(p / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.lr_scheduler.load_state_dict(opt["lr_scheduler"])
        self.ema.load_state_dict(opt["ema"])
        rng = torch.load(p / "rng.pt", weights_only=True)
        if len(rng) == self.world:
            torch.set_rng_state(rng[self.rank]["cpu"])
            if self.device.type == "cuda" and rng[self.rank]["cuda"] is not None:
                torch.cuda.set_rng_state(rng[self.rank]["cuda"], self.device)
        self.step = int(state["step"])
        self._data_states = state["data"]
        saved = state.get("train", {})
        changed = [k for k in ("batch_size", "grad_accum", "seed", "segment_steps", "resampled", "shuffle_buffer",
                               "split", "num_workers") if k in saved and saved[k] != getattr(self.tcfg, k)]
        if changed:
            log.warning("resuming with changed %s: training continues, but not exactly as an uninterrupted run",
                        changed)
        self.stream = None
        log.info("resumed from %s at step %d", p, self.step)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint named by ``out_dir/checkpoints/latest``, or None."""
    f = Path(out_dir) / "checkpoints" / "latest"
    if not f.is_file():
        return None
    p = f.parent / f.read_text().strip()
    return p if (p / "state.json").is_file() else None
