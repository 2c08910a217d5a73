"""xsae.config: schema defaults, error messages that name the key, cross-references, seeds."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from xsae import config
from xsae.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def minimal() -> dict:
    return {
        "datasets": {"tux": {"kind": "tuxpaint_stamps"}},
        "encoders": {"effnet": {"loader": "efficientnet_lite0"}},
        "features": {"tux": ["effnet"]},
        "streams": {"img": {"encoder": "effnet", "modality": "image"}},
        "sae_runs": {"r": {"method": "topk", "dataset": "tux", "streams": ["img"],
                           "n_latents": 32, "k": 4}},
        "tables": {"reconstruction": {"runs": ["r"]}},
    }


def error_of(cfg: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config.validate(cfg)
    return str(info.value)


# ---- the repo's own config ------------------------------------------------------------------
def test_repo_config_loads_with_defaults():
    cfg = config.load(REPO / "config" / "config.yaml")
    run = cfg["sae_runs"]["topk_effnet"]
    assert run["topk"] == "global"
    assert run["input_norm"] == "l2"
    assert run["seed"] is None
    assert run["k"] == 16 and run["n_latents"] == 256
    assert cfg["encoders"]["minilm"]["gpu"] is False
    assert cfg["encoders"]["minilm"]["dtype"] == "float32"
    assert cfg["datasets"]["tuxpaint"]["unpacked"] is None
    assert cfg["datasets"]["tuxpaint"]["deb"] is None
    assert cfg["tables"]["reconstruction"]["split"] == "test"
    assert cfg["streams"]["effnet"]["layer"] is None
    assert cfg["seed"] == 0 and cfg["device"] == "auto"


# ---- defaults on a minimal dict -------------------------------------------------------------
def test_minimal_gets_nested_defaults():
    cfg = config.validate(minimal())
    run = cfg["sae_runs"]["r"]
    assert run["auxk"]["k"] == 64
    assert run["auxk"]["coef"] == pytest.approx(1 / 32, abs=0)
    assert run["auxk"]["dead_steps"] == 1000
    assert run["auxk"]["threshold"] == 1e-3
    assert run["epochs"] == 50 and run["batch_size"] == 256 and run["lr"] == 1e-4
    assert run["topk"] == "global"
    assert cfg["seed"] == 0 and cfg["device"] == "auto"
    assert cfg["figures"] == {"dataset_overview": [], "n_examples": 12}
    assert cfg["datasets"]["tux"]["test_fraction"] == 0.2
    assert cfg["encoders"]["effnet"]["batch_size"] == 32


def test_without_optional_sections_defaults_to_empty():
    cfg = config.validate({"datasets": {"tux": {"kind": "tuxpaint_stamps"}},
                           "encoders": {"e": {"loader": "mobilenet_v2"}},
                           "features": {"tux": ["e"]}})
    assert cfg["streams"] == {} and cfg["sae_runs"] == {} and cfg["tables"] == {"sparc": {}}
    assert cfg["sweeps"] == {}


def test_explicit_values_are_kept():
    raw = minimal()
    raw["sae_runs"]["r"]["auxk"] = {"k": 8}
    raw["sae_runs"]["r"]["topk"] = "local"
    cfg = config.validate(raw)
    assert cfg["sae_runs"]["r"]["auxk"] == {"k": 8, "coef": 0.03125, "form": "authors", "dead_steps": 1000,
                                            "threshold": 1e-3}
    assert cfg["sae_runs"]["r"]["topk"] == "local"


def test_validate_does_not_mutate_input():
    raw = minimal()
    before = copy.deepcopy(raw)
    out = config.validate(raw)
    assert raw == before
    out["sae_runs"]["r"]["auxk"]["k"] = 1
    assert raw == before


# ---- schema errors --------------------------------------------------------------------------
def test_unknown_loader_lists_available():
    raw = minimal()
    raw["encoders"]["effnet"]["loader"] = "nope"
    msg = error_of(raw)
    assert "encoders.effnet.loader" in msg
    assert "'nope'" in msg
    assert "efficientnet_lite0" in msg and "mobilenet_v2" in msg and "minilm_l6_v2" in msg


def test_out_of_range_names_key_and_minimum():
    raw = minimal()
    raw["sae_runs"]["r"]["k"] = 0
    msg = error_of(raw)
    assert "sae_runs.r.k" in msg
    assert "minimum" in msg


def test_out_of_range_fraction():
    raw = minimal()
    raw["datasets"]["tux"]["test_fraction"] = 1.0
    msg = error_of(raw)
    assert "datasets.tux.test_fraction" in msg
    assert "maximum" in msg


def test_enum_violation_lists_allowed():
    raw = minimal()
    raw["device"] = "gpu"
    msg = error_of(raw)
    assert "device" in msg
    assert "'gpu'" in msg
    for allowed in ("'auto'", "'cpu'", "'cuda'"):
        assert allowed in msg


def test_nested_enum_violation():
    raw = minimal()
    raw["sae_runs"]["r"]["topk"] = "both"
    msg = error_of(raw)
    assert "sae_runs.r.topk" in msg and "'global'" in msg and "'local'" in msg


def test_unknown_top_level_key():
    raw = minimal()
    raw["sead"] = 1
    msg = error_of(raw)
    assert "'sead'" in msg
    assert "seed" in msg  # the known keys are listed


def test_unknown_nested_key_names_path():
    raw = minimal()
    raw["sae_runs"]["r"]["n_latent"] = 5
    msg = error_of(raw)
    assert "sae_runs.r" in msg and "'n_latent'" in msg and "n_latents" in msg


def test_missing_required_key():
    raw = minimal()
    del raw["datasets"]["tux"]["kind"]
    msg = error_of(raw)
    assert "datasets.tux: 'kind' is a required property" in msg


def test_wrong_type():
    raw = minimal()
    raw["sae_runs"]["r"]["epochs"] = "ten"
    msg = error_of(raw)
    assert "sae_runs.r.epochs" in msg


# ---- cross-references -----------------------------------------------------------------------
def test_stream_with_unknown_encoder():
    raw = minimal()
    raw["streams"]["img"]["encoder"] = "ghost"
    msg = error_of(raw)
    assert "streams.img.encoder" in msg and "'ghost'" in msg and "effnet" in msg


def test_run_with_unknown_stream():
    raw = minimal()
    raw["sae_runs"]["r"]["streams"] = ["img", "txt"]
    msg = error_of(raw)
    assert "sae_runs.r.streams" in msg and "'txt'" in msg


def test_run_with_unknown_dataset():
    raw = minimal()
    raw["sae_runs"]["r"]["dataset"] = "coco"
    msg = error_of(raw)
    assert "sae_runs.r.dataset" in msg and "'coco'" in msg and "tux" in msg


def test_k_larger_than_n_latents():
    raw = minimal()
    raw["sae_runs"]["r"]["k"] = 33
    msg = error_of(raw)
    assert "sae_runs.r.k" in msg and "33" in msg and "32" in msg


def test_k_equal_n_latents_is_fine():
    raw = minimal()
    raw["sae_runs"]["r"]["k"] = 32
    assert config.validate(raw)["sae_runs"]["r"]["k"] == 32


def test_features_with_unknown_encoder():
    raw = minimal()
    raw["features"]["tux"] = ["effnet", "clip"]
    msg = error_of(raw)
    assert "features.tux" in msg and "'clip'" in msg


def test_features_with_unknown_dataset():
    raw = minimal()
    raw["features"]["coco"] = ["effnet"]
    msg = error_of(raw)
    assert "features.coco" in msg and "'coco'" in msg


def test_stream_encoder_not_featurised_for_run_dataset():
    raw = minimal()
    raw["encoders"]["mnet"] = {"loader": "mobilenet_v2"}
    raw["streams"]["m"] = {"encoder": "mnet", "modality": "image"}
    raw["sae_runs"]["r"]["streams"] = ["m"]
    msg = error_of(raw)
    assert "sae_runs.r.streams" in msg and "features.tux" in msg


def test_layer_stream_needs_layers():
    raw = minimal()
    raw["streams"]["img"]["layer"] = 3
    msg = error_of(raw)
    assert "streams.img.layer" in msg and "layers" in msg
    raw["encoders"]["effnet"]["layers"] = True
    assert config.validate(raw)["streams"]["img"]["layer"] == 3


def test_table_with_unknown_run():
    raw = minimal()
    raw["tables"]["reconstruction"]["runs"] = ["r", "zzz"]
    msg = error_of(raw)
    assert "tables.reconstruction.runs" in msg and "'zzz'" in msg


def test_figure_with_unknown_dataset():
    raw = minimal()
    raw["figures"] = {"dataset_overview": ["nope"]}
    msg = error_of(raw)
    assert "figures.dataset_overview" in msg and "'nope'" in msg


def test_source_named_in_error():
    raw = minimal()
    raw["device"] = "gpu"
    with pytest.raises(ConfigError, match=r"my\.yaml"):
        config.validate(raw, source="my.yaml")


# ---- load ----------------------------------------------------------------------------------
def test_load_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value)


def test_load_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("datasets: {tux: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value)


def test_load_invalid_config_names_file(tmp_path):
    import yaml

    raw = minimal()
    raw["device"] = "gpu"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value) and "device" in str(info.value)


def test_load_yaml_list_raises_config_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        config.load(path)


def test_load_round_trip(tmp_path):
    import yaml

    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(minimal()), encoding="utf-8")
    assert config.load(path) == config.validate(minimal())


# ---- seeds -------------------------------------------------------------------------------------
def test_run_seed():
    cfg = config.validate({**minimal(), "seed": 7})
    assert config.run_seed(cfg, cfg["sae_runs"]["r"]) == 7
    assert config.run_seed(cfg, {**cfg["sae_runs"]["r"], "seed": 3}) == 3
    assert config.run_seed(cfg, {**cfg["sae_runs"]["r"], "seed": 0}) == 0  # 0 is a seed, not "unset"
    assert config.run_seed({"seed": 11}, {}) == 11


def test_files_of_must_name_another_dataset_of_the_same_kind():
    raw = minimal()
    raw["datasets"]["coco"] = {"kind": "coco2017"}
    raw["datasets"]["coco_each"] = {"kind": "coco2017", "files_of": "coco",
                                    "manifest_options": {"captions": "each"}}
    assert config.validate(copy.deepcopy(raw))["datasets"]["coco_each"]["files_of"] == "coco"
    raw["datasets"]["coco_each"]["files_of"] = "nowhere"
    assert "datasets.coco_each.files_of: unknown dataset 'nowhere'" in error_of(copy.deepcopy(raw))
    raw["datasets"]["coco_each"]["files_of"] = "tux"
    assert "must be a dataset of the same kind (coco2017)" in error_of(raw)


def test_class_prompts_must_describe_a_labelled_dataset():
    raw = minimal()
    raw["datasets"]["prompts"] = {"kind": "class_prompts", "classes_of": "tux", "templates": "photo"}
    assert config.validate(copy.deepcopy(raw))["datasets"]["prompts"]["class_names"] == "labels"
    raw["datasets"]["prompts"]["classes_of"] = None
    assert "datasets.prompts.classes_of: unknown dataset None" in error_of(copy.deepcopy(raw))
    raw["datasets"]["prompts"].update(classes_of="tux", class_names="openai_imagenet")
    assert "openai_imagenet needs classes_of to be an imagenet_val dataset" in error_of(copy.deepcopy(raw))
    raw["datasets"]["prompts"].update(class_names="labels", templates=["no placeholder"])
    assert "datasets.prompts.templates" in error_of(raw)


# ---- which files a run reads, and how several merge --------------------------------------------
def test_merge_follows_snakemakes_update_config():
    """Several --configfile files merge as Snakemake merges them: mappings key by key, lists and
    scalars replaced; checked against Snakemake's own function."""
    from snakemake.utils import update_config

    base = {"a": {"x": 1, "y": [1, 2], "z": {"deep": 1}}, "b": 2, "c": [1]}
    overlay = {"a": {"y": [3], "z": {"other": 2}}, "c": {"now": "a mapping"}, "d": None}
    expected = copy.deepcopy(base)
    update_config(expected, copy.deepcopy(overlay))
    assert config.merge(base, overlay) == expected
    assert config.merge(base, overlay)["a"] == {"x": 1, "y": [3], "z": {"deep": 1, "other": 2}}
    assert base["a"]["y"] == [1, 2]  # inputs untouched


def test_no_file_means_the_embedded_default_and_a_file_means_only_that_file():
    assert config.config_files([]) == [config.DEFAULT_CONFIG_PATH]
    default = config.load_files([])
    assert "tuxpaint" in default["datasets"]
    paper = config.load_files([REPO / "config" / "paper.yaml"])
    assert "tuxpaint" not in paper["datasets"]
    assert not any(run["dataset"] == "tuxpaint" for run in paper["sae_runs"].values())
    assert paper["synthetic"]["generator"] != default["synthetic"]["generator"]


def test_files_merge_in_order(tmp_path):
    overlay = tmp_path / "my.yaml"
    overlay.write_text("seed: 7\nsae_runs:\n  topk_effnet: {k: 8}\n", encoding="utf-8")
    merged = config.load_files([REPO / "config" / "config.yaml", overlay])
    default = config.load_files([])
    assert merged["seed"] == 7
    assert merged["sae_runs"]["topk_effnet"]["k"] == 8
    assert merged["sae_runs"]["topk_effnet"]["n_latents"] == default["sae_runs"]["topk_effnet"]["n_latents"]
    assert set(merged["sae_runs"]) == set(default["sae_runs"])
    alone = tmp_path / "alone.yaml"
    alone.write_text("seed: 7\n", encoding="utf-8")
    assert config.load_files([alone])["sae_runs"] == {}


def test_an_error_names_every_merged_file(tmp_path):
    overlay = tmp_path / "my.yaml"
    overlay.write_text("sae_runs:\n  topk_effnet: {k: 100000}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"(?s)config\.yaml \+ .*my\.yaml: inconsistent.*k: 100000 exceeds"):
        config.load_files([REPO / "config" / "config.yaml", overlay])


def test_synthetic_experiments_alone_need_no_datasets(tmp_path):
    only = tmp_path / "synthetic.yaml"
    default = config.read_file(REPO / "config" / "config.yaml")
    only.write_text(yaml.safe_dump({"synthetic": default["synthetic"]}), encoding="utf-8")
    cfg = config.load_files([only])
    assert cfg["datasets"] == {} and cfg["encoders"] == {} and cfg["features"] == {}
    assert cfg["synthetic"]["seeds"] == default["synthetic"]["seeds"]


def test_check_config_validates_the_merged_files(tmp_path, capsys):
    from xsae.cli import main

    overlay = tmp_path / "my.yaml"
    overlay.write_text("seed: 3\n", encoding="utf-8")
    assert main(["check-config", str(REPO / "config" / "config.yaml"), str(overlay)]) == 0
    assert f"config.yaml + {overlay}: valid" in capsys.readouterr().out
    assert main(["check-config"]) == 0
    assert f"{config.DEFAULT_CONFIG_PATH}: valid" in capsys.readouterr().out
    overlay.write_text("seed: -1\n", encoding="utf-8")
    assert main(["check-config", str(overlay)]) == 2
    assert "seed" in capsys.readouterr().err
