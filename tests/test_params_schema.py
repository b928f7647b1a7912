"""The params schema (pipelines/params_schema.py): validation with named parameters, one
home for defaults, result-only code versions, and Dagster configs read at run time."""
import re
from pathlib import Path

import dagster as dg
import pytest
import yaml

import pipelines.params_schema as S
from assets_defs.models import EvalConfig, TrainModelsConfig
from assets_defs.resources import (DepthConfig, FeaturesConfig, IngestConfig, PoseConfig, ShardsConfig, SourceConfig,
                                   ViewforgeSettings, WarpConfig)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"source": SourceConfig, "ingest": IngestConfig, "depth": DepthConfig, "warp": WarpConfig,
           "features": FeaturesConfig, "pose": PoseConfig, "shards": ShardsConfig, "train": TrainModelsConfig,
           "eval": EvalConfig}


@pytest.fixture(autouse=True)
def _no_profile_env(monkeypatch):
    monkeypatch.delenv("VIEWFORGE_PROFILE", raising=False)


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    return path


def edit(path: Path, section: str | None, key: str, value) -> None:
    d = yaml.safe_load(path.read_text())
    (d[section] if section else d)[key] = value
    path.write_text(yaml.safe_dump(d))


@pytest.mark.parametrize("overrides, param", [
    ({"warp": {"supersample": 0}}, "warp.supersample"),
    ({"warp": {"views_per_image": 0}}, "warp.views_per_image"),
    ({"warp": {"views_per_image": -1}}, "warp.views_per_image"),
    ({"warp": {"fov_deg": -45}}, "warp.fov_deg"),
    ({"warp": {"fov_deg": 180}}, "warp.fov_deg"),
    ({"depth": {"near": 200, "far": 100}}, "depth.near"),
    ({"profile": "bogus"}, "profile"),
    ({"shards": {"split_fractions": {"train": 0.5, "val": 0.1, "test": 0.1}}}, "shards.split_fractions"),
    ({"shards": {"min_kept_fraction": 1.5}}, "shards.min_kept_fraction"),
    ({"num_buckets": 100}, "num_buckets"),
    ({"execution": {"engine": "spark"}}, "execution.engine"),
    ({"warp": {"min_coverage": 10}}, "warp.min_coverage"),         # > supersample**2 = 9
    ({"warp": {"blur_kernel": 4}}, "warp.blur_kernel"),
    ({"warp": {"blurp": 0.5}}, "warp.blurp"),                     # unknown key (typo)
    ({"source": {"kind": "folder", "path": None}}, "source.path"),
    ({"features": {"image_size": 100}}, "features.image_size"),
    ({"eval": {"small_profile": {"ddim_steps": 0}}}, "eval.small_profile"),
])
def test_invalid_values_are_rejected_naming_the_parameter(params_file, overrides, param):
    with pytest.raises(S.ParamsError) as e:
        S.load_validated_params(params_file, overrides)
    assert e.value.param.startswith(param)
    assert param in str(e.value) and param in e.value.describe()
    assert isinstance(e.value, ValueError)


def test_typo_suggests_the_known_key(params_file):
    with pytest.raises(S.ParamsError, match="did you mean `warp.blur_p`"):
        S.load_validated_params(params_file, {"warp": {"blurp": 0.5}})


def test_params_yaml_validates_and_its_keys_are_the_schemas():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    full = S.validate_params(raw)
    assert set(raw) == set(S.ViewforgeParams.model_fields)
    for section, model in S.SECTIONS.items():
        assert set(raw[section]) == set(model.model_fields), section
        assert all(full[section][k] == v for k, v in raw[section].items()), section   # values kept as written
    assert full["num_buckets"] == 256 and full["shards"]["allow_shrink"] is False


def test_omitted_keys_take_schema_defaults(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("warp:\n  blur_p: 0.5\n")
    p = S.load_validated_params(path)
    assert p["warp"]["blur_p"] == 0.5
    assert p["warp"]["supersample"] == S.WarpParams.model_fields["supersample"].default
    assert p["execution"] == {"engine": "local", "address": None, "num_cpus": None, "num_gpus_per_actor": 1.0}


def test_config_classes_expose_every_launchpad_key_with_its_description_unset_by_default():
    for section, cls in CONFIGS.items():
        schema = S.SECTIONS[section].model_fields
        launchpad = {k for k, f in schema.items() if f.json_schema_extra["launchpad"]}
        assert launchpad <= set(cls.model_fields), section
        for key in launchpad:
            f = cls.model_fields[key]
            assert f.default is None and schema[key].description in f.description, (section, key)
    field = WarpConfig.to_config_schema().as_field().config_type.fields["supersample"]
    assert not field.is_required and "sub-pixels" in field.description


def test_code_version_hashes_result_params_only():
    base = S.validate_params({})
    cv = lambda p, a="warp_pairs": S.params_code_version("warp-2", p, S.ASSET_PARAM_SECTIONS[a])   # noqa: E731
    v0 = cv(base)
    assert re.fullmatch(r"warp-2\+p[0-9a-f]{8}", v0)
    assert cv({}) == v0                                             # defaulted == written
    for speed in ({"warp": {"batch_size": 3}}, {"chunk_size": 7},
                  {"execution": {"engine": "ray"}}, {"depth": {"batch_size": 1}}):
        assert cv(S.validate_params({**base, **speed})) == v0, speed
    assert cv({"warp": {"blur_p": 0.5}}) != v0
    assert cv({"seed": 1}) != v0
    depth_edit = {"depth": {"far": 50.0}}
    changed = {a for a in S.ASSET_PARAM_SECTIONS if cv(depth_edit, a) != cv({}, a)}
    assert changed == {"depth_maps", "warp_pairs", "training_shards", "shard_manifest", "trained_models",
                       "eval_reports"}                            # the edited stage and what follows
    shards_edit = {"shards": {"allow_shrink": True, "min_kept_fraction": 0.1}}   # a guard, not a result
    assert all(cv(shards_edit, a) == cv({}, a) for a in S.ASSET_PARAM_SECTIONS)


def test_every_asset_has_param_sections():
    from assets_defs.definitions import defs
    names = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert names == set(S.ASSET_PARAM_SECTIONS)


def test_small_profile_caps_counts_and_lives_in_the_schema():
    demo = S.effective_section({"profile": "demo", "eval": {"num_samples": 5}}, "eval")
    small = S.EvalParams.model_fields["small_profile"].default_factory()
    assert demo["num_samples"] == 5 and demo["ddim_steps"] == small["ddim_steps"] and demo["split"] == "train"
    assert S.effective_section({"profile": "default"}, "eval")["num_samples"] == 10000
    train = S.effective_section({"profile": "smoke"}, "train")
    assert train["config"] == "tiny" and train["max_steps"] == 30
    assert S.effective_num_buckets({"profile": "demo", "num_buckets": 4096}) == 16


def test_settings_read_the_params_file_at_call_time(params_file):
    s = ViewforgeSettings(params_file=str(params_file))
    assert s.params()["warp"]["blur_p"] == 0.8
    edit(params_file, "warp", "blur_p", 0.25)
    assert s.params()["warp"]["blur_p"] == 0.25
    # only the launchpad fields that were set override the file
    p = s.params("warp", WarpConfig(views_per_image=2))
    assert p["warp"]["views_per_image"] == 2 and p["warp"]["blur_p"] == 0.25
    p = s.params("shards", ShardsConfig(split_fractions={"train": 0.5, "val": 0.5}))   # replaced, not merged
    assert p["shards"]["split_fractions"] == {"train": 0.5, "val": 0.5}
    p = s.params("ingest", IngestConfig(resolution=64))
    assert p["ingest"]["resolution"] == 64 and p["ingest"]["min_size"] == 64
    p = s.params("source", SourceConfig(kind="folder", path="/x"))
    assert p["source"] == {"kind": "folder", "path": "/x"}


def test_invalid_params_fail_cleanly(params_file):
    edit(params_file, "warp", "supersample", 0)
    with pytest.raises(dg.Failure) as e:
        ViewforgeSettings(params_file=str(params_file)).params("warp", WarpConfig())
    assert "warp.supersample" in e.value.description and "params.yaml" in e.value.description
    assert e.value.metadata["parameter"].value == "warp.supersample"


def test_a_run_applies_set_fields_over_the_file_read_at_run_time(params_file):
    seen = []

    @dg.asset
    def probe(config: WarpConfig, settings: ViewforgeSettings) -> None:
        seen.append(settings.params("warp", config)["warp"])

    res = lambda: dg.materialize(   # noqa: E731
        [probe], resources={"settings": ViewforgeSettings(params_file=str(params_file))},
        run_config={"ops": {"probe": {"config": {"views_per_image": 2}}}})
    assert res().success
    edit(params_file, "warp", "fov_deg", 30.0)
    assert res().success
    assert [s["views_per_image"] for s in seen] == [2, 2] and [s["fov_deg"] for s in seen] == [45.0, 30.0]


def test_weights_error_says_how_to_run_the_demo():
    from pipelines.models import WeightsUnavailableError, resolve_weights
    with pytest.raises(WeightsUnavailableError, match="VIEWFORGE_PROFILE=demo") as e:
        resolve_weights(local=None, hub_id=None, param_local="depth.local_dir", param_hub="depth.model",
                        load_local=None, load_hub=None, make_random=None, profile="default")
    assert "depth.local_dir" in str(e.value)


def test_null_sections_take_their_defaults():
    p = S.validate_params({"pose": None, "warp": None})
    assert p["pose"] == S.validate_params({})["pose"] and p["warp"]["padding"] is None
