"""Scoring the method comparisons of "Same Concept, Different Directions" on real embeddings
(Tables 1–4, Figures 7 and 8); the runs a comparison generates are `xsae.comparison_runs`.

Each run is scored on held-out data of other datasets of the same encoders: reconstruction MSE
(‖x − x̂‖², the paper's Eq. 7) and image↔text Recall@1/5/10 in the latent space on a retrieval
dataset (COCO: several captions per image), reconstruction MSE and zero-shot top-1 accuracy on a
classification dataset with class-prompt features (ImageNet), concept steering (Figure 7) and
monosemanticity scores with an external encoder (Figure 8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from xsae.datasets.manifest import Label, read_labels, read_manifest
from xsae.errors import ConfigError, DataError
from xsae.features import StreamRef, load_streams
from xsae.metrics.monosemanticity import monosemanticity_scores
from xsae.metrics.retrieval import multi_caption_retrieval
from xsae.metrics.steering import COCO_ALIASES, concept_latents, mention_matrix, steering_retrieval
from xsae.metrics.synthetic import encode_chunks
from xsae.metrics.zero_shot import firing_rates, zero_shot_table
from xsae.runs import normalize_inputs
from xsae.sae import Codes, SparseAutoencoder

IMAGE, TEXT = 0, 1
#: `steering.aliases` of a comparison: other words that name a class in captions.
STEERING_ALIASES: dict[str, Mapping[str, Sequence[str]] | None] = {"coco": COCO_ALIASES, "none": None}


# ---- evaluation -----------------------------------------------------------------------------------
def _encode(model: SparseAutoencoder, stream: int, x: torch.Tensor, batch_size: int = 8192) -> Codes:
    return Codes.concatenate(list(encode_chunks((model, stream), x, batch_size)))


def _squared_error(model: SparseAutoencoder, stream: int, x: torch.Tensor, codes: Codes) -> float:
    """Mean over rows of ‖x − x̂‖² (the paper's reconstruction MSE)."""
    recon = model.decode(stream, codes)
    return float((recon - x).double().pow(2).sum(dim=1).mean())


def _features(
    paths: Sequence[str | Path], modalities: Sequence[str], input_norm: str, device: torch.device
) -> tuple[list[torch.Tensor], list[str]]:
    arrays, ids = load_streams([StreamRef(Path(p), m) for p, m in zip(paths, modalities, strict=True)])
    return [normalize_inputs(a, input_norm).to(device) for a in arrays], ids


def group_captions(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(row of each distinct image, image index of each caption row): one row per image–caption
    pair, or one per image, both work; rows sharing an `image_path` are one image."""
    codes, uniques = pd.factorize(table["image_path"])
    first = (
        np.array([int(np.flatnonzero(codes == i)[0]) for i in range(len(uniques))])
        if len(uniques)
        else np.zeros(0, dtype=int)
    )
    return first, codes.astype(np.int64)


def leaf_label_sets(table: pd.DataFrame, labels: Sequence[Label]) -> tuple[list[str], np.ndarray]:
    """The leaf classes and a bool `[N, C]` of which rows carry each.

    Rows list their labels in `leaf_ids` or, in manifests without it, in `label_ids` (with their
    ancestors, which a leaf class never is). A class is named by its label name, or by its path
    where several leaves share a name (Tux Paint has a "cartoon" under several categories).
    """
    parents = {label.parent for label in labels if label.parent is not None}
    leaves = [label for label in labels if label.id not in parents]
    counts = pd.Series([label.name for label in leaves]).value_counts()
    names = [label.name if counts[label.name] == 1 else label.path for label in leaves]
    column = {label.id: j for j, label in enumerate(leaves)}
    cells = table["leaf_ids"] if "leaf_ids" in table else table["label_ids"]
    member = np.zeros((len(table), len(leaves)), dtype=bool)
    for i, cell in enumerate(cells.astype(str)):
        for part in filter(None, cell.split(";")):
            if int(part) in column:
                member[i, column[int(part)]] = True
    return names, member


@dataclass(frozen=True)
class EncodedPairs:
    """A retrieval set encoded once for every score: its distinct images (the first row of each
    `image_path`) and all captions, their codes, and the image index of each caption."""

    images: torch.Tensor
    texts: torch.Tensor
    image_codes: Codes
    text_codes: Codes
    first: np.ndarray  # table row of each distinct image
    caption_image: np.ndarray  # image index of each caption row


@torch.no_grad()
def encode_pairs(
    model: SparseAutoencoder, image: torch.Tensor, text: torch.Tensor, table: pd.DataFrame
) -> EncodedPairs:
    """`image`, `text`: features of the table's rows (one row per image–caption pair, or per image)."""
    first, caption_image = group_captions(table)
    images = image[torch.as_tensor(first, device=image.device)]
    return EncodedPairs(images, text, _encode(model, IMAGE, images), _encode(model, TEXT, text), first,
                        caption_image)


@torch.no_grad()
def score_retrieval(model: SparseAutoencoder, pairs: EncodedPairs) -> dict[str, float]:
    """COCO-style reconstruction MSE and image↔text recalls (percent) in the latent space."""
    mse = 0.5 * (_squared_error(model, IMAGE, pairs.images, pairs.image_codes)
                 + _squared_error(model, TEXT, pairs.texts, pairs.text_codes))
    caption_image = torch.as_tensor(pairs.caption_image)
    recall = multi_caption_retrieval(pairs.image_codes, pairs.text_codes, caption_image)
    out = {"retrieval_mse": mse, "n_images": float(len(pairs.first)), "n_captions": float(len(pairs.texts))}
    for direction, key in (("image_to_text", "i2t"), ("text_to_image", "t2i")):
        for k in (1, 5, 10):
            out[f"{key}_r{k}"] = 100 * recall[direction][f"R@{k}"]
    return out


@torch.no_grad()
def score_zero_shot(
    model: SparseAutoencoder,
    image: torch.Tensor,
    table: pd.DataFrame,
    prompts: torch.Tensor,
    prompt_table: pd.DataFrame,
    train_image: torch.Tensor | None = None,
) -> dict[str, float]:
    """Image reconstruction MSE and zero-shot top-1 accuracy (percent) through the latent space.

    Class c of the prompts is the c-th distinct `leaf_ids` value in prompt order (class-major);
    an image's class is its single leaf label. Frequent image latents (> ½ of the training images)
    are dropped in the `drop_frequent` variant when training images are given.
    """
    classes = list(dict.fromkeys(prompt_table["leaf_ids"].astype(str)))
    index = {leaf: c for c, leaf in enumerate(classes)}
    unknown = sorted(set(table["leaf_ids"].astype(str)) - set(index))
    if unknown:
        raise DataError(f"zero-shot: images carry labels {unknown[:5]} that no prompt names")
    labels = torch.as_tensor([index[leaf] for leaf in table["leaf_ids"].astype(str)])
    image_codes = _encode(model, IMAGE, image)
    rates = (
        firing_rates(_encode(model, IMAGE, train_image), model.config.n_latents)
        if train_image is not None
        else None
    )
    zero_shot = zero_shot_table(
        image_codes,
        prompts,
        labels,
        lambda x: _encode(model, TEXT, x),
        model.config.n_latents,
        n_classes=len(classes),
        train_firing_rates=rates,
    )
    out = {"zero_shot_mse": _squared_error(model, IMAGE, image, image_codes)}
    for row in zero_shot.itertuples():
        out["zero_shot" if row.variant == "all_latents" else f"zero_shot_{row.variant}"] = 100 * row.accuracy
    return out


def steering_concepts(table: pd.DataFrame, labels: Sequence[Label], concepts_from: str,
                      aliases: Mapping[str, Sequence[str]] | None = None
                      ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The leaf classes, which rows carry each (bool `[N, C]`) and which captions are its positives.

    `concepts_from`: `captions` (captions that mention the class name, or one of its `aliases`:
    "sofa" for couch, COCO) or `labels` (captions of samples labelled with the class, for captions
    that rarely name their category). Aliases of classes the dataset does not have are ignored.
    """
    concepts, member = leaf_label_sets(table, labels)
    if concepts_from == "captions":
        known = {name: words for name, words in (aliases or {}).items() if name in set(concepts)}
        return concepts, member, mention_matrix(table["caption"].tolist(), concepts, known)
    if concepts_from == "labels":
        return concepts, member, member
    raise ConfigError(f"steering.concepts_from must be captions or labels, got {concepts_from!r}")


@torch.no_grad()
def score_steering(
    model: SparseAutoencoder,
    pairs: EncodedPairs,
    table: pd.DataFrame,
    labels: Sequence[Label],
    *,
    concepts_from: str,
    alphas: Sequence[float],
    n_sources: int,
    seed: int,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Figure 7: for each leaf class, the text latent most specific to it, its (aligned) image decoder
    direction added to source images without the class, and mAP/MRR of retrieved images with it.
    `concepts_from` and `aliases` as in `steering_concepts`.
    """
    concepts, member, mentions = steering_concepts(table, labels, concepts_from, aliases)
    chosen = concept_latents(pairs.text_codes, mentions, concepts, model.config.n_latents, seed=seed)
    result = steering_retrieval(
        pairs.images,
        member[pairs.first],
        concepts,
        chosen["latent"].to_numpy(),
        model.dec_weight[IMAGE].detach(),
        alphas=alphas,
        n_sources=n_sources,
        seed=seed,
    )
    return result.merge(chosen[["concept", "mean_difference"]], on="concept", how="left")


@torch.no_grad()
def score_monosemanticity(
    model: SparseAutoencoder,
    pairs: EncodedPairs,
    external_image: torch.Tensor,
    external_text: torch.Tensor,
) -> pd.DataFrame:
    """Figure 8: per-latent monosemanticity of the image latents (on the distinct images, with the
    external encoder's image embeddings of the same table rows) and of the text latents (captions,
    its text embeddings)."""
    rows = torch.as_tensor(pairs.first, device=external_image.device)
    parts = []
    for modality, codes, external in (
        ("image", pairs.image_codes, external_image[rows]),
        ("text", pairs.text_codes, external_text),
    ):
        scores = monosemanticity_scores(codes, external, model.config.n_latents)
        curve = scores.sorted_scores()
        curve.insert(0, "modality", modality)
        parts.append(curve)
    return pd.concat(parts, ignore_index=True)


@torch.no_grad()
def align_run(
    weights_path: str | Path,
    train_paths: Sequence[str | Path],
    modalities: Sequence[str],
    *,
    input_norm: str,
    aligned_path: str | Path,
    device: torch.device,
) -> dict[str, Any]:
    """Post-hoc alignment of a trained modality-specific run: re-index its text latents by the
    Hungarian matching of coactivation correlations on the training pairs; save the copy."""
    from xsae.alignment import align_streams

    model = SparseAutoencoder.load(weights_path, device=device).eval()
    (image, text), _ = _features(train_paths, modalities, input_norm, device)
    report = align_streams(
        model,
        IMAGE,
        TEXT,
        encode_chunks((model, IMAGE), image),
        encode_chunks((model, TEXT), text),
        device=device,
    )
    model.save(
        aligned_path,
        extra_metadata={
            "post_hoc_alignment": {
                k: report[k]
                for k in (
                    "n_matched",
                    "mean_matched_correlation",
                    "n_alive_reference",
                    "n_alive_moved",
                    "n_samples",
                )
            }
        },
    )
    return {
        k: (v.tolist() if hasattr(v, "tolist") else v)
        for k, v in report.items()
        if k not in ("matched", "matched_pairs", "matched_correlation")
    }


def _encoded_split(model: SparseAutoencoder, inputs: Mapping[str, Any], role: str, input_norm: str,
                   device: torch.device) -> tuple[pd.DataFrame, EncodedPairs, list[str]]:
    """The manifest, encoded image–caption pairs and sample ids of the test split that `inputs`
    name `<role>_image`, `<role>_text` and `<role>_manifest`."""
    table = read_manifest(inputs[f"{role}_manifest"])
    (image, text), ids = _features([inputs[f"{role}_image"], inputs[f"{role}_text"]], ["image", "text"],
                                   input_norm, device)
    if ids != table["sample_id"].tolist():
        raise DataError(f"{inputs[f'{role}_manifest']}: rows differ from the features' sample_ids; "
                        "re-extract them")
    return table, encode_pairs(model, image, text, table), ids


@torch.no_grad()
def evaluate_run(
    weights_path: str | Path,
    spec: Mapping[str, Any],
    *,
    input_norm: str,
    inputs: Mapping[str, Any],
    device: torch.device,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Every score a comparison asks for, on one (trained or aligned) run.

    `inputs`: paths by role (as the workflow names them): `retrieval_image`, `retrieval_text`,
    `retrieval_manifest`, `retrieval_labels`; optionally `zero_shot_image`, `zero_shot_manifest`,
    `prompts`, `prompts_manifest`, `train_image` (for the frequent-latent variant); optionally
    `external_image`, `external_text` (monosemanticity), with `monosemanticity_image`,
    `monosemanticity_text` and `monosemanticity_manifest` when it is scored on another dataset than
    retrieval. Returns (metrics, steering, monosemanticity).
    """
    model = SparseAutoencoder.load(weights_path, device=device).eval()
    table, pairs, ids = _encoded_split(model, inputs, "retrieval", input_norm, device)
    scores = score_retrieval(model, pairs)
    if "zero_shot_image" in inputs:
        zs_table = read_manifest(inputs["zero_shot_manifest"])
        (zs_image,), _ = _features([inputs["zero_shot_image"]], ["image"], input_norm, device)
        prompt_table = read_manifest(inputs["prompts_manifest"])
        (prompts,), _ = _features([inputs["prompts"]], ["text"], "none", device)
        train_image = None
        if "train_image" in inputs:
            (train_image,), _ = _features([inputs["train_image"]], ["image"], input_norm, device)
        scores.update(score_zero_shot(model, zs_image, zs_table, prompts, prompt_table, train_image))
    metrics = pd.DataFrame({"metric": list(scores), "value": list(scores.values())})
    steering = pd.DataFrame()
    if spec["steering"]:
        settings = spec["steering"]
        steering = score_steering(
            model,
            pairs,
            table,
            read_labels(inputs["retrieval_labels"]),
            concepts_from=settings["concepts_from"],
            alphas=settings["alphas"],
            n_sources=settings["n_sources"],
            seed=seed,
            aliases=STEERING_ALIASES[settings["aliases"]],
        )
    mono = pd.DataFrame()
    if "external_image" in inputs:
        role = "monosemanticity" if "monosemanticity_image" in inputs else "retrieval"
        if role == "monosemanticity":
            _, pairs, ids = _encoded_split(model, inputs, role, input_norm, device)
        (ext_image, ext_text), ext_ids = _features(
            [inputs["external_image"], inputs["external_text"]], ["image", "text"], "l2", device
        )
        if ext_ids != ids:
            raise DataError(f"{inputs['external_image']}: rows differ from {inputs[f'{role}_image']}")
        mono = score_monosemanticity(model, pairs, ext_image, ext_text)
    return metrics, steering, mono


@torch.no_grad()
def decoder_directions(
    weights_path: str | Path,
    train_paths: Sequence[str | Path],
    modalities: Sequence[str],
    *,
    input_norm: str,
    device: torch.device,
    max_pairs_per_bin: int | None = 200_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Figure 2/9 data of one modality-specific run: the cosine distance between image and text
    decoder directions of every pair of alive latents, by the pair's coactivation correlation on
    the training pairs (Appendix D.1). Bins are subsampled to `max_pairs_per_bin` for plotting;
    the full counts are in the table's `attrs`."""
    from xsae.alignment import coactivation_correlation, decoder_cosine_by_correlation

    model = SparseAutoencoder.load(weights_path, device=device).eval()
    if model.n_streams != 2 or model.config.shared_weights:
        raise ConfigError(f"{weights_path}: decoder directions need two separately trained streams "
                          "(a modality_specific run)")
    if model.config.input_dims[0] != model.config.input_dims[1]:
        raise ConfigError(f"{weights_path}: image and text widths differ {model.config.input_dims}; "
                          "directions compare only within one joint embedding space")
    (image, text), _ = _features(train_paths, modalities, input_norm, device)
    stats = coactivation_correlation(
        encode_chunks((model, IMAGE), image),
        encode_chunks((model, TEXT), text),
        model.config.n_latents,
        model.config.n_latents,
        device=device,
    )
    return decoder_cosine_by_correlation(
        model.dec_weight[IMAGE].detach(),
        model.dec_weight[TEXT].detach(),
        stats,
        max_pairs_per_bin=max_pairs_per_bin,
        seed=seed,
    )
