"""Method comparisons of the heterogeneity paper: generated runs, scoring, the Table 1 layout."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from xsae import config
from xsae.comparison_runs import comparison_runs
from xsae.comparisons import (
    STEERING_ALIASES,
    encode_pairs,
    group_captions,
    leaf_label_sets,
    score_retrieval,
    score_zero_shot,
    steering_concepts,
)
from xsae.datasets.manifest import Label
from xsae.errors import ConfigError
from xsae.heterogeneity_tables import comparison_table
from xsae.sae import SAEConfig, SparseAutoencoder

BASE = {
    "datasets": {"tux": {"kind": "tuxpaint_stamps"}},
    "encoders": {"e": {"loader": "efficientnet_lite0"}, "m": {"loader": "minilm_l6_v2"}},
    "features": {"tux": ["e", "m"]},
    "streams": {"img": {"encoder": "e", "modality": "image"}, "txt": {"encoder": "m", "modality": "text"}},
}


def with_comparison(**spec) -> dict:
    raw = copy.deepcopy(BASE)
    raw["comparisons"] = {"cmp": {"dataset": "tux", "streams": ["img", "txt"], "retrieval": "tux", **spec}}
    return raw


def test_every_trained_method_and_seed_becomes_a_checked_run():
    cfg = config.validate(
        with_comparison(
            seeds=[1, 2],
            sae={"n_latents": 64, "k": 4},
            methods=["shared_group_sparse", "modality_specific", "modality_specific_post_hoc"],
        )
    )
    runs = cfg["sae_runs"]
    assert sorted(runs) == [
        "cmp_modality_specific_s1",
        "cmp_modality_specific_s2",
        "cmp_shared_group_sparse_s1",
        "cmp_shared_group_sparse_s2",
    ]
    group = runs["cmp_shared_group_sparse_s2"]
    assert group["method"] == "shared" and group["seed"] == 2 and group["n_latents"] == 64
    assert group["alignment_loss"] == {"kind": "group_sparse", "weight": 0.05, "multiplier": 1.0}
    assert runs["cmp_modality_specific_s1"]["optimizer"] == "adam"  # schema defaults filled in
    members = comparison_runs(cfg)["cmp"]
    post_hoc = [m for m in members if m["method"] == "modality_specific_post_hoc"]
    assert [(m["run"], m["variant"]) for m in post_hoc] == [
        ("cmp_modality_specific_s1", "aligned"),
        ("cmp_modality_specific_s2", "aligned"),
    ]


@pytest.mark.parametrize("iso_energy_loss", [None, "iso_energy_cosine", "iso_energy"])
def test_iso_energy_runs_in_the_authors_cosine_form_unless_eq11_is_asked_for(iso_energy_loss):
    """λ = 1e-4 on CC-3M was tuned for the authors' cosine form, the default; Eq. 11 on request."""
    extra = {} if iso_energy_loss is None else {"iso_energy_loss": iso_energy_loss}
    cfg = config.validate(with_comparison(methods=["shared_iso_energy"], sae={"n_latents": 64, "k": 4},
                                          seeds=[1], **extra))
    loss = cfg["sae_runs"]["cmp_shared_iso_energy_s1"]["alignment_loss"]
    assert loss == {"kind": iso_energy_loss or "iso_energy_cosine", "weight": 1e-4, "multiplier": 1.0}


def test_comparison_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="list modality_specific too"):
        config.validate(with_comparison(methods=["modality_specific_post_hoc"]))
    with pytest.raises(ConfigError, match=r"comparisons.cmp.sae: \['seed'\] are set per run"):
        config.validate(with_comparison(sae={"seed": 3}))
    with pytest.raises(ConfigError, match=r"sae_runs\.cmp_shared_s1\.k"):
        config.validate(with_comparison(methods=["shared"], sae={"k": 0}))


def test_captions_are_grouped_by_image_path():
    table = pd.DataFrame({"image_path": ["a", "a", "b", "c", "c", "c"]})
    first, caption_image = group_captions(table)
    assert first.tolist() == [0, 2, 3] and caption_image.tolist() == [0, 0, 1, 2, 2, 2]


def test_leaf_classes_and_membership_from_leaf_ids():
    labels = [
        Label(0, "animal", "animal", None, 1),
        Label(1, "animal/cat", "cat", 0, 2),
        Label(2, "vehicle", "vehicle", None, 1),
    ]
    names, member = leaf_label_sets(pd.DataFrame({"leaf_ids": ["1", "", "2;1"]}), labels)
    assert names == ["cat", "vehicle"]
    assert member.tolist() == [[True, False], [False, False], [True, True]]


def _twin_model(d: int = 16, n_latents: int = 64, k: int = 4) -> SparseAutoencoder:
    """Two streams with the same weights: text codes equal image codes for equal inputs."""
    model = SparseAutoencoder(
        SAEConfig((d, d), n_latents, k, "local"), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        for params in (model.enc_weight, model.dec_weight, model.pre_bias, model.lat_bias):
            params[1].copy_(params[0])
    return model.eval()


def test_retrieval_is_perfect_when_captions_encode_like_their_images():
    torch.manual_seed(0)
    model = _twin_model()
    images = torch.nn.functional.normalize(torch.randn(5, 16), dim=1)
    per_image = [2, 1, 3, 1, 2]
    rows = torch.cat([images[i].expand(n, -1) for i, n in enumerate(per_image)])
    table = pd.DataFrame({"image_path": [f"im{i}" for i, n in enumerate(per_image) for _ in range(n)]})
    scores = score_retrieval(model, encode_pairs(model, rows, rows, table))
    assert scores["i2t_r1"] == scores["t2i_r1"] == 100.0
    assert scores["n_images"] == 5 and scores["n_captions"] == 9
    with torch.no_grad():
        recon = model.decode(0, model.encode([images, images])[0])
        caption_recon = model.decode(1, model.encode([rows, rows])[1])
    expected = float((recon - images).pow(2).sum(1).mean())  # the MSE of the distinct images
    expected = 0.5 * (expected + float((caption_recon - rows).pow(2).sum(1).mean()))
    assert scores["retrieval_mse"] == pytest.approx(expected, rel=1e-6)


def test_zero_shot_is_perfect_when_each_class_prompt_is_its_images_embedding():
    torch.manual_seed(1)
    model = _twin_model()
    classes = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
    images = classes[[0, 1, 2, 2, 1]]
    table = pd.DataFrame({"leaf_ids": ["7", "8", "9", "9", "8"]})
    prompts = classes.repeat_interleave(2, dim=0)  # two templates per class, class-major
    prompt_table = pd.DataFrame({"leaf_ids": ["7", "7", "8", "8", "9", "9"]})
    scores = score_zero_shot(model, images, table, prompts, prompt_table)
    assert scores["zero_shot"] == 100.0 and scores["zero_shot_mse"] >= 0
    with pytest.raises(Exception, match="no prompt names"):
        score_zero_shot(
            model, images, pd.DataFrame({"leaf_ids": ["7", "8", "9", "9", "5"]}), prompts, prompt_table
        )


def test_table_means_and_sample_spread_over_seeds_beside_published_rows():
    def frame(mse, r1):
        return pd.DataFrame({"metric": ["retrieval_mse", "i2t_r1"], "value": [mse, r1]})

    metrics = {
        ("modality_specific", 1): frame(0.1, 0.0),
        ("modality_specific", 2): frame(0.3, 0.0),
        ("modality_specific_post_hoc", 1): frame(0.1, 20.0),
    }
    table = comparison_table(
        metrics,
        ["modality_specific", "modality_specific_post_hoc"],
        {"modality_specific_post_hoc": {"retrieval_mse": 0.089, "i2t_r1": 16.0, "i2t_r1_std": 0.5}},
    )
    reproduced = table[table["source"] == "reproduced"].set_index("method")
    assert reproduced.loc["modality_specific", "retrieval_mse"] == pytest.approx(0.2)
    assert reproduced.loc["modality_specific", "retrieval_mse_std"] == pytest.approx(np.sqrt(0.02))
    assert reproduced.loc["modality_specific", "runs"] == 2
    assert np.isnan(reproduced.loc["modality_specific_post_hoc", "i2t_r1_std"])  # one seed: no spread
    assert np.isnan(reproduced.loc["modality_specific", "zero_shot"])  # not measured
    paper = table[table["source"] == "paper"]
    assert paper["method"].tolist() == ["modality_specific_post_hoc"]
    assert paper[["i2t_r1", "i2t_r1_std"]].iloc[0].tolist() == [16.0, 0.5]


def test_evaluation_datasets_must_have_the_features_they_need():
    raw = with_comparison(monosemanticity={"image_encoder": "e", "text_encoder": "nobody"})
    with pytest.raises(ConfigError, match=r"monosemanticity\.text_encoder: unknown encoder"):
        config.validate(raw)
    raw = with_comparison(zero_shot={"dataset": "tux", "prompts": "tux"})
    raw["features"]["tux"] = ["e", "m"]
    with pytest.raises(ConfigError, match="'tux' must be a class_prompts dataset"):
        config.validate(raw)
    raw = with_comparison()
    raw["datasets"]["other"] = {"kind": "tuxpaint_stamps"}
    raw["comparisons"]["cmp"]["retrieval"] = "other"
    raw["features"]["other"] = ["e"]
    with pytest.raises(ConfigError, match=r"needs features of 'm' on 'other'; add it to features\.other"):
        config.validate(raw)


def test_monosemanticity_on_another_dataset_needs_every_encoders_features_there():
    """Figure 8 on CC-3M's validation set: the comparison's two encoders and the external one must
    have features on that dataset; the workflow then reads them, not the retrieval dataset's."""
    from xsae.config import monosemanticity_dataset

    raw = with_comparison(monosemanticity={"image_encoder": "e", "text_encoder": "e", "dataset": "val"})
    raw["datasets"]["val"] = {"kind": "tuxpaint_stamps"}
    raw["features"]["val"] = ["e"]
    with pytest.raises(ConfigError, match=r"cmp\.monosemanticity\.dataset: needs features of 'm' on 'val'"):
        config.validate(raw)
    raw["features"]["val"] = ["e", "m"]
    spec = config.validate(raw)["comparisons"]["cmp"]
    assert monosemanticity_dataset(spec) == "val"
    unset = {**spec, "monosemanticity": {**spec["monosemanticity"], "dataset": None}}
    assert monosemanticity_dataset(unset) == "tux"  # the retrieval dataset


def test_decoder_directions_of_a_saved_run(tmp_path):
    from xsae.comparisons import decoder_directions
    from xsae.synthetic import SyntheticConfig, generate, write_dataset

    data = generate(
        SyntheticConfig(d=16, n_shared=8, n_image=4, n_text=4, sparsity=0.7, n_train=400, n_eval=50, seed=3)
    )
    write_dataset(data, tmp_path / "train.h5", tmp_path / "eval.h5", tmp_path / "truth.npz")
    model = SparseAutoencoder(SAEConfig((16, 16), 32, 4, "local"), generator=torch.Generator().manual_seed(0))
    model.save(tmp_path / "w.safetensors")
    table = decoder_directions(
        tmp_path / "w.safetensors",
        [tmp_path / "train.h5"] * 2,
        ["image", "text"],
        input_norm="l2",
        device=torch.device("cpu"),
        max_pairs_per_bin=None,
    )
    assert {"bin", "latent_a", "latent_b", "correlation", "cosine_distance"} <= set(table.columns)
    assert table["cosine_distance"].between(0, 2).all() and (table["correlation"] > 0).all()
    dec = model.dec_weight
    row = table.iloc[0]
    expected = 1 - float(dec[0][int(row["latent_a"])] @ dec[1][int(row["latent_b"])])
    assert row["cosine_distance"] == pytest.approx(expected, abs=1e-6)
    shared = SparseAutoencoder(SAEConfig((16, 16), 32, 4, "local", shared_weights=True))
    shared.save(tmp_path / "shared.safetensors")
    with pytest.raises(ConfigError, match="separately trained streams"):
        decoder_directions(
            tmp_path / "shared.safetensors",
            [tmp_path / "train.h5"] * 2,
            ["image", "text"],
            input_norm="l2",
            device=torch.device("cpu"),
        )


def test_leaf_classes_from_label_ids_with_repeated_names_use_paths():
    labels = [Label(0, "animals", "animals", None, 1), Label(1, "animals/cartoon", "cartoon", 0, 2),
              Label(2, "food", "food", None, 1), Label(3, "food/cartoon", "cartoon", 2, 2),
              Label(4, "food/fruit", "fruit", 2, 2)]
    names, member = leaf_label_sets(pd.DataFrame({"label_ids": ["0;1", "2;4", "2;3"]}), labels)
    assert names == ["animals/cartoon", "food/cartoon", "fruit"]
    assert member.tolist() == [[True, False, False], [False, False, True], [False, True, False]]


def test_the_comparison_caption_names_the_datasets_behind_each_role():
    from xsae.tables import comparison_caption

    caption = comparison_caption({"retrieval": "tuxpaint", "zero_shot": None})
    assert caption.endswith("Retrieval dataset: tuxpaint; classification dataset: none.")
    paper = comparison_caption({"retrieval": "coco", "zero_shot": {"dataset": "imagenet_prompts"}})
    assert "Retrieval dataset: coco; classification dataset: imagenet_prompts." in paper


def test_steering_positives_are_captions_naming_the_class_or_an_alias():
    """COCO captions say "sofa" and "bikes" for couch and bicycle: with the COCO aliases (the
    default) they count as positives, without them only the class names do; `labels` takes the
    labelled rows whatever the captions say."""
    labels = [Label(0, "furniture", "furniture", None, 1), Label(1, "furniture/couch", "couch", 0, 2),
              Label(2, "vehicle", "vehicle", None, 1), Label(3, "vehicle/bicycle", "bicycle", 2, 2)]
    table = pd.DataFrame({"caption": ["a red sofa in a room", "a couch", "two bikes on a street", "a dog"],
                          "leaf_ids": ["1", "1", "3", "3"]})
    concepts, member, mentions = steering_concepts(table, labels, "captions", STEERING_ALIASES["coco"])
    assert concepts == ["couch", "bicycle"]
    assert mentions.astype(int).tolist() == [[1, 0], [1, 0], [0, 1], [0, 0]]
    _, _, plain = steering_concepts(table, labels, "captions", STEERING_ALIASES["none"])
    assert plain.astype(int).tolist() == [[0, 0], [1, 0], [0, 0], [0, 0]]
    _, _, labelled = steering_concepts(table, labels, "labels", STEERING_ALIASES["coco"])
    assert np.array_equal(labelled, member)
    assert member.astype(int).tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    with pytest.raises(ConfigError, match="concepts_from must be captions or labels"):
        steering_concepts(table, labels, "both")
