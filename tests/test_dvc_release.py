"""Dataset releases work from any clone: a producer releases v1 and v2 with `make release`
(pipelines/release.py) to a bare upstream git repo and a shared DVC remote (absolute path),
then a fresh directory runs the README's consumer commands (`dvc get`, `dvc import`,
`dvc update --rev`) and gets sha256-identical shard directories, and exactly the sample
changes made between v1 and v2. The shards are written by the project's writer
(`pipelines.shards.write_shards`) from synthetic pairs in a one-stage DVC pipeline whose out
is `data/shards`, like the project's `training_shards`; no ML stage runs."""
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipelines.release import ReleaseError, check_remote_url, release

REPO = Path(__file__).resolve().parents[1]
DVC_BIN = REPO / ".venv-dvc" / "bin"


def _dvc() -> str | None:
    return str(DVC_BIN / "dvc") if (DVC_BIN / "dvc").is_file() else shutil.which("dvc")


needs_dvc = pytest.mark.skipif(_dvc() is None or shutil.which("git") is None or shutil.which("make") is None,
                               reason="DVC CLI, git or make not installed")

# The producer's only stage: synthetic IVID pairs through the real shard writer. params.yaml
# `shards.variant: 2` changes the target image of sample 0 and adds sample 6.
MAKE_SHARDS = '''
import numpy as np, yaml
from pipelines.shards import depth_encoding, write_shards

p = yaml.safe_load(open("params.yaml"))["shards"]
def pair(i, variant):
    rng = np.random.default_rng(i)
    sk = "%016x" % (0x9e3779b97f4a7c15 * (i + 1) % 2**64)
    target = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    if variant == 2 and i == 0:
        target = 255 - target
    return {"key": sk + "_00", "sample_key": sk, "target": target, "cond": target[::-1].copy(),
            "target_depth": rng.integers(0, 65536, (8, 8), dtype=np.uint16),
            "cond_depth": rng.integers(0, 65536, (8, 8), dtype=np.uint16),
            "mask": rng.random((8, 8)) > 0.5, "mask_rgb": rng.random((8, 8)) > 0.5,
            "camera": {"yaw": 0.1 * i, "depth_encoding": depth_encoding(0.5, 100.0)},
            "pose": i % 3, "label": None, "meta": {"source_uri": "photos/%d.png" % i}}
n = 7 if p["variant"] == 2 else 6
pairs = sorted((pair(i, p["variant"]) for i in range(n)), key=lambda s: s["key"])
write_shards(pairs, "data/shards", fractions={"train": 0.5, "val": 0.5}, maxcount=p["maxcount"],
             dataset_version="synthetic-v%d" % p["variant"])
'''
DVC_YAML = """stages:
  training_shards:
    cmd: .venv/bin/python make_shards.py
    deps:
      - make_shards.py
    params:
      - shards
    outs:
      - data/shards
"""


def _key(i: int) -> str:
    """Sample ``i``'s key, as MAKE_SHARDS builds it."""
    return "%016x_00" % (0x9e3779b97f4a7c15 * (i + 1) % 2**64)


def _readme_consumer_commands(repo_url: str) -> list[str]:
    """The shell lines of the README's "For training teams" bash block, ``<repo-url>`` filled in."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index("### For training teams"):], re.S).group(1)
    lines = [re.sub(r"\s+#.*$", "", ln).strip() for ln in block.splitlines()]
    return [ln.replace("<repo-url>", shlex.quote(repo_url)) for ln in lines if ln and not ln.startswith("#")]


def _sha_map(d: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``d`` (layout-independent)."""
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _samples(d: Path) -> dict[str, dict[str, str]]:
    """sample key -> {member extension: sha256} over every tar under ``d`` (stdlib tarfile)."""
    out: dict[str, dict[str, str]] = {}
    for tar_path in sorted(d.rglob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
    return out


@pytest.fixture()
def env(tmp_path):
    path = os.pathsep.join([str(DVC_BIN), os.environ["PATH"]])
    ident = {f"GIT_{w}_{k}": v for w in ("AUTHOR", "COMMITTER")
             for k, v in (("NAME", "viewforge test"), ("EMAIL", "test@example.invalid"))}
    return {**os.environ, **ident, "PATH": path, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1",
            "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}


def _run(env, cwd, *args):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _make_release(env, cwd, tag, remote) -> subprocess.CompletedProcess:
    """Run the command line that `make release TAG=.. REMOTE=..` runs, inside ``cwd``."""
    dry = _run(env, REPO, "make", "-s", "-n", "release", f"TAG={tag}", f"REMOTE={remote}",
               f"PY={sys.executable}")
    line = next(ln for ln in dry.splitlines() if "-m pipelines.release" in ln)
    assert f'--tag "{tag}"' in line and (f'--remote "{remote}"' in line) == bool(remote)
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True)


def _init_producer(env, prod: Path) -> None:
    """git + DVC repository with the project's shipped .dvc/config (no remote, autostage)."""
    _run(env, prod, _dvc(), "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", prod / ".dvc" / "config")
    _run(env, prod, "git", "add", "-A")
    _run(env, prod, "git", "commit", "-q", "-m", "producer")


@needs_dvc
@pytest.mark.timeout(300)
def test_release_then_get_import_update_from_a_fresh_directory(tmp_path, env):
    upstream, remote, prod, cons = (tmp_path / n for n in ("upstream.git", "dvc-store", "producer", "consumer"))
    _run(env, tmp_path, "git", "init", "-q", "--bare", str(upstream))
    _run(env, tmp_path, "git", "clone", "-q", str(upstream), str(prod))
    (prod / "make_shards.py").write_text(MAKE_SHARDS)
    (prod / "dvc.yaml").write_text(DVC_YAML)
    (prod / "params.yaml").write_text("shards:\n  variant: 1\n  maxcount: 2\n")
    (prod / ".venv").symlink_to(REPO / ".venv")  # the stage runs `.venv/bin/python`, as the project's run `.venv/bin/dagster`
    (prod / ".gitignore").write_text(".venv\ndata/\n")  # as the project's .gitignore
    _init_producer(env, prod)

    rel1 = _make_release(env, prod, "v1", remote)
    assert rel1.returncode == 0, rel1.stdout + rel1.stderr
    v1 = _sha_map(prod / "data" / "shards")
    (prod / "params.yaml").write_text("shards:\n  variant: 2\n  maxcount: 2\n")
    with pytest.raises(ReleaseError, match="modified tracked files.*params.yaml"):
        release("v2", str(remote), repo=prod, dvc=_dvc(), log=lambda *_: None)
    _run(env, prod, "git", "commit", "-q", "-am", "variant 2")
    rel2 = _make_release(env, prod, "v2", "")  # later releases reuse the committed remote
    assert rel2.returncode == 0, rel2.stdout + rel2.stderr
    v2 = _sha_map(prod / "data" / "shards")

    # what was released: tags in the upstream, dvc.lock committed without machine paths,
    # the remote (absolute) in the tagged .dvc/config, data in the remote
    assert set(_run(env, upstream, "git", "tag").split()) == {"v1", "v2"}
    for tag in ("v1", "v2"):
        lock = _run(env, upstream, "git", "show", f"{tag}:dvc.lock")
        assert "data/shards" in lock and str(tmp_path) not in lock and not re.search(r"\s/\w", lock)
        assert f"url = {remote}" in _run(env, upstream, "git", "show", f"{tag}:.dvc/config")
    assert "warning" not in rel1.stdout
    assert any(p.is_file() for p in remote.rglob("*"))
    assert "manifest.json" in v1 and "manifest.json" in v2 and v1 != v2

    # consumer: the README's commands, verbatim, from a fresh directory
    cons.mkdir()
    get, *tracked, update = _readme_consumer_commands(str(upstream))
    assert get.startswith("dvc get ") and "--rev v1" in get and update.startswith("dvc update --rev v2")
    _run(env, cons, "bash", "-c", get)
    _run(env, cons, "bash", "-c", get.replace("v1", "v2"))
    assert _sha_map(cons / "shards-v1") == v1
    assert _sha_map(cons / "shards-v2") == v2
    from pipelines.shard_manifest import verify
    assert verify(cons / "shards-v1").ok and verify(cons / "shards-v2").ok

    s1, s2 = _samples(cons / "shards-v1"), _samples(cons / "shards-v2")
    assert set(s1) == {_key(i) for i in range(6)} and set(s2) == set(s1) | {_key(6)}
    assert {k for k in s1 if s1[k] != s2[k]} == {_key(0)}  # the one sample variant 2 changed
    assert {e for e in s1[_key(0)] if s1[_key(0)][e] != s2[_key(0)][e]} == {"target.png", "cond.png"}

    _run(env, cons, "git", "init", "-q")
    _run(env, cons, "dvc", "init", "-q")
    for cmd in tracked:  # mkdir -p data; dvc import --rev v1; git add + commit
        _run(env, cons, "bash", "-c", cmd)
    assert _sha_map(cons / "data" / "shards") == v1
    _run(env, cons, "bash", "-c", update)
    assert _sha_map(cons / "data" / "shards") == v2
    assert "rev: v2" in (cons / "data" / "shards.dvc").read_text()


@needs_dvc
@pytest.mark.timeout(120)
def test_release_refuses_without_an_absolute_remote(tmp_path, env):
    _run(env, tmp_path, "git", "init", "-q")
    _init_producer(env, tmp_path)
    refused = _make_release(env, tmp_path, "v1", "")  # the project as shipped has no remote
    assert refused.returncode == 2
    assert "no DVC remote configured" in refused.stderr and "REMOTE=" in refused.stderr
    quiet = dict(repo=tmp_path, dvc=_dvc(), log=lambda *_: None)
    with pytest.raises(ReleaseError, match="not absolute"):
        release("v1", "../dvc-remote", **quiet)
    with pytest.raises(ReleaseError, match="no DVC remote named 'nosuch'"):
        release("v1", "nosuch", **quiet)
    with pytest.raises(ReleaseError, match="no tag given"):
        release("", str(tmp_path / "store"), **quiet)
    assert not _run(env, tmp_path, "git", "tag").strip()  # nothing was tagged


def test_remote_url_rules_and_project_config():
    for ok in ("s3://bucket/viewforge", "gs://b/p", "ssh://host/srv/dvc", "/shared/dvc-store"):
        assert check_remote_url(ok) == ok
    for bad in ("../dvc-remote", "dvc-remote/", "~/dvc-store", ""):
        with pytest.raises(ReleaseError, match="not absolute"):
            check_remote_url(bad)
    # the project ships no relative default remote (a clone would resolve it elsewhere)
    config = (REPO / ".dvc" / "config").read_text()
    for url in re.findall(r"^\s*url\s*=\s*(\S+)", config, flags=re.M):
        check_remote_url(url)
