"""The built wheel is usable on its own (issue 12): ``training/configs`` ship in it, and
``python -m training.train --config tiny`` trains from an install in a fresh venv.

Offline: the wheel is built from a copy of the sources with the environment's setuptools
(``pip wheel --no-deps --no-build-isolation --no-index``); the venv sees the project's
dependencies through a ``.pth`` line naming this environment's site-packages (a directory
named in a ``.pth`` file is not itself scanned for ``.pth`` files, so the editable install
of the checkout stays invisible) and the wheel is installed with ``--no-deps --no-index``.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from test_training_helpers import write_tiny_shards

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kw) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, **kw)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of pyproject.toml and the packages it includes."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for d in REPO.iterdir():
        if d.is_dir() and (d / "__init__.py").is_file() and any(fnmatch.fnmatch(d.name, p) for p in include):
            shutil.copytree(d, src / d.name, ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", str(tmp / "dist"), str(src)])
    (whl,) = (tmp / "dist").glob("viewforge-*.whl")
    return whl


def test_wheel_contains_training_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"training/configs/{p.name}" for p in (REPO / "training" / "configs").glob("*.yaml")}
    assert {"training/configs/tiny.yaml", "training/configs/base.yaml"} <= shipped <= names


@pytest.mark.timeout(300)
def test_installed_wheel_trains_tiny_config_two_steps(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (site / "viewforge-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
          str(wheel)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    where = _run([str(py), "-c", "import training; print(training.__file__)"], cwd=tmp_path, env=env)
    assert Path(where.strip()).is_relative_to(site), where  # the installed copy, not the checkout
    shards = write_tiny_shards(tmp_path / "shards", n=8, size=16, maxcount=4)
    out = _run([str(py), "-m", "training.train", "--config", "tiny", "--shards", str(shards),
                "--out", str(tmp_path / "run"), "train.max_steps=2", "train.log_every=1"],
               cwd=tmp_path, env=env)
    rows = (tmp_path / "run" / "logs" / "train.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"], out
    assert (tmp_path / "run" / "config.yaml").is_file()
