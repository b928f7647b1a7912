"""One table of what each stage reads and writes (pipelines.stages.specs.STAGES): the Dagster
deps and dvc.yaml are checked against it, and the layers import in one direction only."""
import ast
from pathlib import Path

import yaml

from pipelines.stages.specs import STAGES, param_sections, upstream_closure

REPO = Path(__file__).resolve().parents[1]
#: DVC forbids overlapping outs: a merge step that writes inside its input's out is run by
#: the DVC stage of that input.
DVC_STAGE_OF = {"shard_manifest": "training_shards", "viewset_manifest": "viewset_shards"}


def _dvc():
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_dagster_deps_are_the_declared_inputs():
    from assets_defs.definitions import defs

    graph = defs.resolve_asset_graph()
    for name, spec in STAGES.items():
        node = graph.get(__import__("dagster").AssetKey(name))
        assert {k.to_user_string() for k in node.parent_keys} == set(spec.inputs), name
        assert node.is_partitioned == spec.partitioned, name


def test_dvc_stages_match_the_declared_table():
    dvc = _dvc()
    for name, spec in STAGES.items():
        stage = dvc[DVC_STAGE_OF.get(name, name)]
        assert name in stage["cmd"].split(), (name, stage["cmd"])
        deps = set(stage["deps"])
        missing = [f for f in spec.code if f not in deps and not any(f.startswith(d + "/") for d in deps)]
        assert not missing, (name, missing)
        for up in spec.inputs:
            if DVC_STAGE_OF.get(name) == up:
                continue
            data_outs = [o for o in STAGES[up].outputs if not o.startswith("cache/")]
            assert any(f"data/{o}" in deps for o in data_outs), (name, up)
        assert set(param_sections(name)) <= set(stage["params"]), (name, stage["params"])
        outs = {next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]}
        for o in spec.outputs:
            assert any(f"data/{o}" == x or f"data/{o}".startswith(x + "/") for x in outs), (name, o, outs)


def test_every_code_file_exists_and_closure_is_ordered():
    for spec in STAGES.values():
        for f in spec.code:
            assert (REPO / f).exists(), f
    assert upstream_closure("shard_manifest")[0] == "source_listing"


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module.split(".")[0])
    return mods


def test_dependencies_point_one_way():
    """assets_defs -> eval -> training -> pipelines: pipelines imports neither training nor
    eval nor assets_defs; training imports neither eval nor assets_defs; eval not assets_defs."""
    forbidden = {"pipelines": {"training", "eval", "assets_defs"}, "training": {"eval", "assets_defs"},
                 "eval": {"assets_defs"}}
    bad = []
    for pkg, banned in forbidden.items():
        for f in (REPO / pkg).rglob("*.py"):
            hit = _imports(f) & banned
            if hit:
                bad.append(f"{f.relative_to(REPO)} imports {sorted(hit)}")
    assert not bad, bad
