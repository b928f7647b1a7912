"""Weights resolution shared by every model the pipeline loads (DESIGN.md, Models and weights).

Order: a local checkpoint given in params, then the hub id (cached by huggingface_hub or
timm). When neither resolves, :class:`WeightsUnavailableError` names the parameter to set;
only the ``demo`` and ``smoke`` profiles fall back to tiny random models, and then every
output is labelled :data:`RANDOM_WEIGHTS`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from pipelines.params_sections import SMALL_PROFILES

log = logging.getLogger("viewforge")

RANDOM_WEIGHTS = "random (not meaningful)"
RANDOM_OK_PROFILES = SMALL_PROFILES   # profiles that may fall back to tiny random models
RANDOM_WEIGHTS_SEED = 0
"""Seed of every tiny random fallback model: two demo/smoke runs produce identical outputs."""


class WeightsUnavailableError(RuntimeError):
    """Neither the local checkpoint nor the hub id could be loaded."""


@dataclass
class Resolved:
    """A loaded model and where its weights came from.

    ``origin`` is ``"local:<path>"``, ``"hub:<id>"`` or :data:`RANDOM_WEIGHTS`.
    ``extra`` holds companions such as an image processor.
    """
    model: Any
    origin: str
    extra: Any = None

    @property
    def is_random(self) -> bool:
        return self.origin == RANDOM_WEIGHTS


def resolve_weights(*, local: str | None, hub_id: str | None, param_local: str, param_hub: str,
                    load_local: Callable[[str], Any], load_hub: Callable[[str], Any],
                    make_random: Callable[[], Any] | None, profile: str) -> Resolved:
    """Load weights in the documented order.

    ``load_*`` return ``(model, extra)``; ``make_random`` builds a tiny random model of
    the same class (used only when ``profile`` is ``demo`` or ``smoke``).

    Raises:
        WeightsUnavailableError: nothing could be loaded and random weights are not
            allowed; the message names ``param_local`` and ``param_hub``.
    """
    errors = []
    if local:
        if os.path.exists(local):
            try:
                m, extra = load_local(local)
                return Resolved(m, f"local:{local}", extra)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"local {local!r}: {type(e).__name__}: {e}")
        else:
            errors.append(f"local {local!r}: path does not exist")
    if hub_id:
        try:
            m, extra = load_hub(hub_id)
            return Resolved(m, f"hub:{hub_id}", extra)
        except Exception as e:  # noqa: BLE001
            errors.append(f"hub {hub_id!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    msg = (f"could not load weights ({'; '.join(errors) or 'nothing configured'}). "
           f"Set `{param_local}` in params.yaml to a local checkpoint, or `{param_hub}` to a hub id "
           f"that is cached or reachable.")
    if profile in RANDOM_OK_PROFILES and make_random is not None:
        log.warning("!!! %s -- profile %r: falling back to TINY RANDOM weights; outputs are %s !!!",
                    msg, profile, RANDOM_WEIGHTS)
        m, extra = make_random()
        return Resolved(m, RANDOM_WEIGHTS, extra)
    raise WeightsUnavailableError(
        f"{msg} To try viewforge without weights, run the demo profile: `VIEWFORGE_PROFILE=demo` (or "
        f"`profile: demo` in params.yaml); it uses tiny random models and labels every output {RANDOM_WEIGHTS!r}.")


def reusable_origin(previous: str | None, *, local: str | None, hub_id: str | None, profile: str) -> str | None:
    """The weights origin a stage may assume *without loading the model*: the origin its
    last run recorded, if the current parameters would resolve to the same one in
    :func:`resolve_weights`' order (a local checkpoint that still exists, else the same hub id
    with no local checkpoint configured, else random weights in a demo / smoke profile with
    neither). None when a load is needed to know. A stage whose samples are all cached under
    the version of this origin then skips building the model.
    """
    if not previous:
        return None
    local_ok = bool(local) and os.path.exists(local)
    if previous.startswith("local:"):
        return previous if local_ok and previous == f"local:{local}" else None
    if previous.startswith("hub:"):
        return previous if not local_ok and previous == f"hub:{hub_id}" else None
    if previous == RANDOM_WEIGHTS:
        return previous if profile in RANDOM_OK_PROFILES and not local_ok else None
    return None


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Within the block torch's default CPU generator is seeded with ``seed``; on exit its
    previous state is restored (``torch.random.fork_rng``), so building a random model
    neither depends on nor disturbs the caller's random stream. CUDA generators are left
    alone: build random models on CPU, then move them.

    For the tiny random models (tests, demo/smoke fallback): same ``seed`` -> identical
    weights, in any process.
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        yield


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA devices that support it, fp16 on older CUDA, None (fp32) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face endpoint accepts a TCP connection within ``timeout`` s.

    False when ``HF_HUB_OFFLINE`` is set. Used to skip hub downloads (which retry for
    tens of seconds) on machines without network; cached hub files are still used.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_from_hub(load: Callable[..., Any], hub_id: str) -> Any:
    """Call ``load(hub_id, local_files_only=True)`` (the local cache), and only when that
    fails and the hub is reachable, ``load(hub_id)`` (download).

    Raises:
        OSError: not cached and the hub is unreachable (or the download failed).
    """
    try:
        return load(hub_id, local_files_only=True)
    except Exception as cached_error:  # noqa: BLE001
        if not hub_reachable():
            raise OSError(f"{hub_id!r} is not in the local cache and the hub is unreachable") from cached_error
        return load(hub_id)


@contextlib.contextmanager
def offline_unless_hub_reachable() -> Iterator[None]:
    """Within the block, huggingface_hub runs in offline mode (cache only) when the hub
    is unreachable, so a missing checkpoint fails in milliseconds instead of after
    huggingface_hub's retries. For loaders without a ``local_files_only`` flag (timm)."""
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    if not old and not hub_reachable():
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old
