"""Release a dataset version: materialize, commit ``dvc.lock``, push the data, tag, push the tag.

``make release TAG=v1 REMOTE=/shared/dvc-store`` runs ``python -m pipelines.release`` with
``.venv-dvc/bin`` on ``PATH`` (DVC lives in its own environment, see ``DESIGN.md``). The
flow, each step stopping the release with a message when it fails:

1. checks: git work tree at the repository root with ``.dvc/``; ``TAG`` is a new, valid tag
   name; no modified tracked files other than the ones step 4 commits (the tag must name
   the code and ``params.yaml`` that made the data).
2. remote: ``REMOTE`` is an absolute URL (``s3://...``, ``gs://...``, ``ssh://...``, or an
   absolute path on a filesystem every consumer mounts) or the name of a remote in
   ``.dvc/config``; without ``REMOTE`` the project's default remote is used. It must be in
   the committed ``.dvc/config`` (not ``config.local``) with an absolute URL, because
   ``dvc get``/``dvc import`` from another clone read the tagged ``.dvc/config`` and would
   resolve a relative path against their own temporary clone.
3. ``dvc repro TARGETS`` (default ``training_shards``): reruns only what changed; the
   stages' per-sample caches make an up-to-date graph cheap. Then each shard
   ``manifest.json`` must verify
   (:func:`pipelines.shard_manifest.verify`).
4. ``git commit`` of ``dvc.lock``, ``.dvc/config`` and the ``.gitignore``/``.dvc`` files DVC
   changed (nothing else can be modified, see 1).
5. ``dvc push -r REMOTE TARGETS``: the data is in the remote before any tag names it.
6. ``git tag -a TAG`` and ``git push GIT_REMOTE refs/tags/TAG`` (skipped, with a note, when
   the repository has no such git remote).

Consumers then run ``dvc get``/``dvc import <repo> data/shards --rev TAG`` (README, "For
training teams"). Follows DVC's data registry workflow
(https://dvc.org/doc/use-cases/data-registry).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

DEFAULT_TARGETS = ("training_shards",)
DEFAULT_REMOTE_NAME = "storage"
DEFAULT_MANIFESTS = ("data/shards/manifest.json",)
USAGE = ("make release TAG=<tag> REMOTE=<absolute url>   e.g. REMOTE=/shared/dvc-store "
         "(a path every consumer mounts) or REMOTE=s3://bucket/viewforge")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ABS_PATH_RE = re.compile(r"(?<![\w.:/-])/(?:[\w.+-]+/)+[\w.+-]*")


class ReleaseError(RuntimeError):
    """A release precondition or step failed; the message says what to do."""


@dataclass
class Release:
    """What :func:`release` did: ``tag``, the tagged ``commit`` (hex), the DVC ``remote``
    name and ``url``, and whether the tag was pushed to ``git_remote``."""

    tag: str
    commit: str
    remote: str
    url: str
    git_remote: str | None


def check_remote_url(url: str) -> str:
    """Return ``url`` if consumers on other machines can resolve it, else raise.

    Accepted: a URL with a scheme (``s3://``, ``gs://``, ``azure://``, ``ssh://``,
    ``http(s)://``...) or an absolute filesystem path. Rejected: relative paths (DVC
    resolves them against the clone that reads the config, which for ``dvc get`` is a
    temporary directory) and ``~`` paths (a different home on every machine).

    Raises:
        ReleaseError: empty, relative or home-relative ``url``.
    """
    if _SCHEME_RE.match(url) or (os.path.isabs(url) and not url.startswith("~")):
        return url
    raise ReleaseError(f"DVC remote URL {url!r} is not absolute: consumers resolve a relative "
                       f"path against their own clone. Use an absolute path on shared storage "
                       f"or an s3://, gs://, ssh:// URL: {USAGE}")


class _Repo:
    """git and DVC commands in one repository; failures raise :class:`ReleaseError`."""

    def __init__(self, root: Path, dvc: str):
        self.root, self.dvc = root, dvc

    def run(self, *cmd: str, capture: bool = True, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=self.root, text=True,
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None)
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout or "").strip() if capture else "(output above)"
            raise ReleaseError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {detail}")
        return proc

    def git(self, *args: str, **kw) -> str:
        return self.run("git", *args, **kw).stdout.strip()

    def dvc_cmd(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(self.dvc, *args, **kw)

    def project_config(self) -> dict[str, str]:
        out = self.dvc_cmd("config", "--project", "--list").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def changed(self) -> list[str]:
        """Tracked paths that differ from HEAD (staged or not)."""
        return self.git("diff", "--name-only", "HEAD", "--").splitlines()


def _resolve_remote(repo: _Repo, remote: str | None) -> tuple[str, str]:
    """(name, url) of the release remote, made the project default in ``.dvc/config``."""
    cfg = repo.project_config()
    urls = {k[len("remote."):-len(".url")]: v for k, v in cfg.items()
            if k.startswith("remote.") and k.endswith(".url")}
    if remote and ("/" in remote or ":" in remote or remote.startswith("~")):
        url = check_remote_url(remote)
        name = next((n for n, u in urls.items() if u == url), DEFAULT_REMOTE_NAME)
        if urls.get(name) != url:
            repo.dvc_cmd("remote", "add", "--project", "--force", "--default", name, url)
            return name, url
    elif remote:
        name = remote
        if name not in urls:
            raise ReleaseError(f"no DVC remote named {name!r} in .dvc/config (remotes in "
                               f"config.local are invisible to consumers). Give a URL: {USAGE}")
    else:
        name = cfg.get("core.remote", "")
        if name not in urls:
            raise ReleaseError(f"no DVC remote configured for the release. {USAGE}. The URL is "
                               "written to .dvc/config as the default remote and committed with "
                               "the release, so `dvc get`/`dvc import` from any clone find the data.")
    url = check_remote_url(urls[name])
    if cfg.get("core.remote") != name:
        repo.dvc_cmd("remote", "default", "--project", name)
    return name, url


def _release_file(path: str) -> bool:
    """Files the release commits itself: DVC's lock, config, ``.dvc`` files and ``.gitignore``s."""
    return path in ("dvc.lock", ".dvc/config") or path.endswith((".dvc", ".gitignore"))


def _absolute_paths(text: str) -> list[str]:
    """Absolute filesystem paths mentioned in a text (e.g. ``dvc.lock``), in order, unique."""
    return list(dict.fromkeys(_ABS_PATH_RE.findall(text)))


def _verify_manifests(root: Path, manifests: Sequence[str]) -> None:
    from pipelines.shard_manifest import verify

    for rel in manifests:
        path = root / rel
        if not path.exists():
            continue
        report = verify(path)
        if not report.ok:
            raise ReleaseError(f"{rel} does not verify, refusing to release: "
                               + "; ".join(report.problems[:5]))


def release(tag: str, remote: str | None = None, *, targets: Sequence[str] = DEFAULT_TARGETS,
            manifests: Sequence[str] = DEFAULT_MANIFESTS, git_remote: str | None = "origin",
            repo: str | os.PathLike = ".", dvc: str | None = None, log=print) -> Release:
    """Materialize ``targets``, commit ``dvc.lock``, push the data to ``remote``, tag, push the tag.

    Args:
        tag: new git tag, e.g. ``"v1"`` (``git check-ref-format``).
        remote: absolute remote URL, or the name of a remote in ``.dvc/config``; ``None``
            uses the project's default remote. A URL is added as remote ``storage`` (unless a
            remote already has it) and made the project default.
        targets: DVC stages or outputs to reproduce and push (default ``training_shards``,
            whose out is ``data/shards``).
        manifests: shard ``manifest.json`` files (relative to the repository) that must
            verify before anything is committed; missing ones are skipped.
        git_remote: git remote to push the tag to; ``None`` or an absent remote: tag locally.
        repo: any directory inside the repository.
        dvc: DVC executable (default: ``dvc`` on ``PATH``).
        log: progress printer.

    Returns:
        :class:`Release`.

    Raises:
        ReleaseError: a check or a command failed (message names the fix). A failure before
            step 6 leaves no tag, so the same command can be rerun.
    """
    if not tag:
        raise ReleaseError(f"no tag given: {USAGE}")
    dvc = dvc or shutil.which("dvc")
    if not dvc:
        raise ReleaseError("DVC CLI not found on PATH: run `make dvc`, and release with "
                           "`make release` (it puts .venv-dvc/bin on PATH)")
    probe = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=repo, text=True,
                           capture_output=True)
    if probe.returncode != 0:
        raise ReleaseError(f"{Path(repo).resolve()} is not inside a git repository")
    r = _Repo(Path(probe.stdout.strip()), dvc)
    if not (r.root / ".dvc").is_dir():
        raise ReleaseError(f"{r.root} has no .dvc directory (run `dvc init`)")
    if r.run("git", "rev-parse", "-q", "--verify", "HEAD", check=False).returncode != 0:
        raise ReleaseError(f"{r.root} has no commit yet: commit the project first")
    if r.run("git", "check-ref-format", f"refs/tags/{tag}", check=False).returncode != 0:
        raise ReleaseError(f"{tag!r} is not a valid git tag name")
    if r.run("git", "rev-parse", "-q", "--verify", f"refs/tags/{tag}", check=False).returncode == 0:
        raise ReleaseError(f"tag {tag!r} already exists: a released version is immutable, pick a new tag")
    dirty = [p for p in r.changed() if not _release_file(p)]
    if dirty:
        raise ReleaseError("modified tracked files; commit them first so the tag names the code and "
                           "parameters that made the data: " + ", ".join(dirty))

    name, url = _resolve_remote(r, remote)
    log(f"release {tag}: remote {name} = {url}")
    r.dvc_cmd("repro", *targets, capture=False)
    _verify_manifests(r.root, manifests)
    lock = r.root / "dvc.lock"
    if not lock.is_file():
        raise ReleaseError("no dvc.lock after `dvc repro`: are the targets DVC stages?")
    if str(r.root) in lock.read_text():
        raise ReleaseError(f"dvc.lock contains this checkout's path {r.root}: make the stage commands, "
                           "deps and params relative")
    others = _absolute_paths(lock.read_text())
    if others:
        log(f"warning: dvc.lock mentions absolute paths (consumers may not have them): {others}")

    to_add = [p for p in r.changed() + r.git("ls-files", "--others", "--exclude-standard").splitlines()
              if _release_file(p)]
    if to_add:
        r.git("add", "--", *to_add)
    if r.changed():
        r.git("commit", "-q", "-m", f"Release {tag}: dvc.lock and remote {name}")
    log(f"dvc push -r {name} {' '.join(targets)}")
    r.dvc_cmd("push", "-r", name, *targets, capture=False)
    r.git("tag", "-a", tag, "-m", f"viewforge dataset {tag} (DVC remote {url})")
    commit = r.git("rev-parse", f"{tag}^{{commit}}")
    pushed = None
    if git_remote and git_remote in r.git("remote").split():
        try:
            r.git("push", "-q", git_remote, f"refs/tags/{tag}")
        except ReleaseError as exn:
            raise ReleaseError(f"{exn}\nThe data is pushed and tag {tag} exists locally: push the tag "
                               f"with `git push {git_remote} {tag}` once the git remote accepts it") from None
        pushed = git_remote
        log(f"pushed tag {tag} ({commit[:12]}) to {git_remote} ({r.git('remote', 'get-url', git_remote)})")
    else:
        log(f"tag {tag} ({commit[:12]}) created locally; no git remote {git_remote!r}: "
            f"push it with `git push <remote> {tag}`")
    return Release(tag, commit, name, url, pushed)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m pipelines.release --tag v1 [--remote URL|NAME] [--target STAGE ...]``.
    Returns the exit status (0 released, 2 refused or failed, message on stderr)."""
    ap = argparse.ArgumentParser(prog="python -m pipelines.release", description=__doc__.split("\n")[0])
    ap.add_argument("--tag", required=True, help="new git tag naming the dataset version")
    ap.add_argument("--remote", default=None, help="absolute DVC remote URL or remote name "
                    "(default: the project's default remote in .dvc/config)")
    ap.add_argument("--target", action="append", dest="targets", help="DVC stage/out to reproduce "
                    "and push (repeatable; default training_shards)")
    ap.add_argument("--git-remote", default="origin", help="git remote receiving the tag (default origin)")
    ap.add_argument("--no-git-push", action="store_true", help="tag locally only")
    ns = ap.parse_args(argv)
    try:
        release(ns.tag, ns.remote or None, targets=tuple(ns.targets or DEFAULT_TARGETS),
                git_remote=None if ns.no_git_push else ns.git_remote)
    except ReleaseError as exn:
        print(f"release failed: {exn}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
