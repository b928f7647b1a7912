"""dvc.yaml mirrors the asset graph: a changed warp parameter makes `dvc status` name the
warp stage and everything downstream, and nothing upstream. Runs the real DVC CLI on the
repository's dvc.yaml and params.yaml, with placeholder deps/outs (no stage is executed)."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _dvc() -> str | None:
    local = REPO / ".venv-dvc" / "bin" / "dvc"
    return str(local) if local.is_file() else shutil.which("dvc")


def _touch(root: Path, rel: str) -> None:
    p = root / rel
    if p.suffix:  # a file (metrics, plots, report)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("yaw,fid\n0,1\n" if p.suffix == ".csv" else "{}\n")
    else:
        p.mkdir(parents=True, exist_ok=True)
        (p / "placeholder").write_text(rel)


@pytest.mark.timeout(300)
@pytest.mark.skipif(_dvc() is None or shutil.which("git") is None, reason="DVC CLI (or git) not installed")
def test_changed_warp_param_names_warp_and_downstream_only(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}
    run = lambda *a: subprocess.run(a, cwd=tmp_path, env=env, check=True, capture_output=True, text=True)  # noqa: E731
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for st in stages.values():
        for entry in st.get("deps", []) + st.get("outs", []) + st.get("metrics", []) + st.get("plots", []):
            rel = entry if isinstance(entry, str) else next(iter(entry))
            if not (tmp_path / rel).exists():
                _touch(tmp_path, rel)
    run("git", "init", "-q")
    run(_dvc(), "init", "-q")
    run(_dvc(), "commit", "-f", "-q")
    assert json.loads(run(_dvc(), "status", "--json").stdout) == {}

    params = (tmp_path / "params.yaml").read_text()
    assert "  blur_p: 0.8\n" in params
    (tmp_path / "params.yaml").write_text(params.replace("  blur_p: 0.8\n", "  blur_p: 0.7\n"))
    changed = set(json.loads(run(_dvc(), "status", "--json").stdout))
    assert changed == {"warp_pairs", "training_shards", "trained_models", "eval_reports"}
