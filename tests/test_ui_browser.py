"""The Dagster UI in a real browser (issue 12 point 7).

Starts ``dagster dev`` on 127.0.0.1 (a free port) in its own session, with a temporary
DAGSTER_HOME (dagster.yaml from ``assets_defs/dagster.yaml``), data root and a copy of
params.yaml, in the demo profile (8 sample images, 16 buckets, tiny random models), and
drives Debian's Chromium through Playwright (``executable_path``: Playwright's own browser
download is not used). Checks, in order: the lineage pages list every asset; "Materialize
all" of the data job from the UI succeeds; an asset page shows an inline preview image that
decoded (``naturalWidth > 0``); after editing ``warp.blur_p`` and "Reload definitions",
warp_pairs and its downstream show as unsynced (code version changed) and upstream does not.
The server's process group is interrupted, then killed, and no process of it may remain.
Screenshots: ``data/test-artifacts/ui/`` (gitignored). ``make test`` installs chromium.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("VIEWFORGE_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
LOCATION = "assets_defs.definitions"
ARTIFACTS = REPO / "data" / "test-artifacts" / "ui"

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} missing (make test installs Debian's chromium)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_processes(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(d))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    home, data = tmp / "dagster_home", tmp / "data"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "assets_defs" / "dagster.yaml").read_text()
                                       .replace("@GPU_POOL_LIMIT@", "1"))
    params = tmp / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "VIEWFORGE_DATA": str(data), "VIEWFORGE_PARAMS": str(params),
           "VIEWFORGE_PROFILE": "demo", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml",
                             "-h", "127.0.0.1", "-p", str(port)], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"dagster dev did not start: {(tmp / 'server.log').read_text()[-3000:]}")
                time.sleep(1)
        yield {"url": url, "home": home, "data": data, "params": params, "tmp": tmp}
    finally:
        # what Ctrl-C does to `make ui`: interrupt the group, then kill what is left
        os.killpg(proc.pid, signal.SIGINT)
        deadline = time.time() + 15
        while _session_processes(proc.pid) and time.time() < deadline:
            time.sleep(0.25)
        if _session_processes(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(1)
        proc.wait(timeout=30)
        log.close()
        assert _session_processes(proc.pid) == [], "processes of dagster dev left behind"


@pytest.fixture(scope="module")
def page(server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        pg = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def _goto(page, url: str) -> None:
    page.goto(url)
    page.wait_for_load_state("networkidle")
    skip = page.get_by_role("button", name="Skip")   # the first-visit community dialog
    if skip.count():
        skip.click()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _instance(server):
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(server["home"])))


DATA = ["source_listing", "source_images", "depth_maps", "warp_pairs", "dinov2_features", "pose_clusters",
        "training_shards", "shard_manifest"]
MODELS = ["trained_models", "eval_reports"]


def test_lineage_lists_every_asset(server, page):
    for group, assets in (("data", DATA), ("models", MODELS)):
        _goto(page, f"{server['url']}/locations/{LOCATION}/asset-groups/{group}/lineage")
        for a in assets:
            page.get_by_text(a, exact=True).first.wait_for()
        _shot(page, f"lineage_{group}")


def test_materialize_data_job_from_ui(server, page):
    _goto(page, f"{server['url']}/locations/{LOCATION}/jobs/build_training_shards")
    page.get_by_role("button", name="Materialize all").first.click()
    page.get_by_role("button", name="All", exact=True).click()
    _shot(page, "launch_dialog")
    t0 = time.time()
    page.get_by_role("button", name="Launch backfill").click()
    page.get_by_text("Created backfill").wait_for()
    instance = _instance(server)
    backfill = None
    while time.time() - t0 < 420:
        backfills = instance.get_backfills(limit=1)
        backfill = backfills[0] if backfills else None
        if backfill is not None and backfill.status.value != "REQUESTED":
            break
        time.sleep(3)
    wall = time.time() - t0
    runs = instance.get_run_records()
    print(f"UI data job: backfill {backfill and backfill.status.value} after {wall:.1f} s; runs "
          + ", ".join(f"{r.dagster_run.status.value} {r.end_time - r.start_time:.1f} s" for r in runs
                      if r.start_time and r.end_time))
    _goto(page, f"{server['url']}/runs")
    _shot(page, "runs")
    assert backfill is not None and backfill.status.value == "COMPLETED_SUCCESS", \
        f"backfill {backfill and backfill.status.value}; runs {[r.dagster_run.status.value for r in runs]}"
    assert runs and all(r.dagster_run.status.value == "SUCCESS" for r in runs)
    assert (server["data"] / "shards" / "manifest.json").exists()


def _inline_images(page) -> list[tuple[str, int]]:
    return page.eval_on_selector_all("img[src^='data:image/']", "els => els.map(e => [e.alt, e.naturalWidth])")


@pytest.mark.parametrize("asset", ["depth_maps", "warp_pairs"])
def test_asset_page_shows_inline_preview(server, page, asset):
    _goto(page, f"{server['url']}/assets/{asset}")
    page.locator("img[src^='data:image/webp']").first.wait_for()
    page.wait_for_function("() => [...document.querySelectorAll(\"img[src^='data:image/webp']\")]"
                           ".some(e => e.complete && e.naturalWidth > 0)")
    _shot(page, f"asset_{asset}")
    img = page.locator("img[src^='data:image/webp']").first
    img.scroll_into_view_if_needed()
    img.screenshot(path=str(ARTIFACTS / f"preview_{asset}.png"))
    assert any(w > 0 for _, w in _inline_images(page))
    body = page.inner_text("body")
    assert "random (not meaningful)" in body   # demo profile: labelled
    assert "Columns" in body                   # dagster/column_schema of the index


def _unsynced(page, server, asset: str, partition: str | None) -> bool:
    q = f"?view=partitions&partition={partition}" if partition else ""
    _goto(page, f"{server['url']}/assets/{asset}{q}")
    page.wait_for_timeout(1500)
    _shot(page, f"after_edit_{asset}")
    return "Unsynced" in page.inner_text("body")


def test_param_edit_marks_warp_and_downstream_changed(server, page):
    text = server["params"].read_text()
    edited, n = re.subn(r"(?m)^(\s+blur_p:\s*)[0-9.]+", r"\g<1>0.25", text)
    assert n == 1
    server["params"].write_text(edited)
    _goto(page, f"{server['url']}/locations/{LOCATION}/asset-groups/data/lineage")
    page.get_by_role("button", name="Reload definitions").click()
    page.get_by_text("Definitions reloaded").wait_for()
    _shot(page, "after_edit_lineage")
    bucket = "0"
    changed = {a: _unsynced(page, server, a, bucket) for a in ("warp_pairs", "training_shards")}
    changed["shard_manifest"] = _unsynced(page, server, "shard_manifest", None)
    unchanged = {a: _unsynced(page, server, a, bucket) for a in ("source_images", "depth_maps", "dinov2_features")}
    unchanged["pose_clusters"] = _unsynced(page, server, "pose_clusters", None)
    assert all(changed.values()), changed
    assert not any(unchanged.values()), unchanged
