"""Concept steering through aligned latents (heterogeneity paper, §7.2 and Figure 7).

For each concept (COCO's 80 object categories in the paper):

1. Concept latent: over the captions, the mean activation of each TEXT latent on captions that
   mention the concept minus its mean on a same-size random set of captions that do not (drawn
   without replacement, seeded per concept; all of them if fewer remain); the latent with the
   largest difference (lowest index on ties). The text SAE is already aligned (latent j means the
   same in both modalities), so the steering vector is the IMAGE decoder row of that latent, d_j.
2. Sources: `n_sources` (100) images that do not contain the concept, drawn seeded per concept.
3. Steering, in embedding space as the paper says: x' = x + α · d_j / ‖d_j‖ for every α.
4. Retrieval: all gallery images (the test set, sources included) ranked by cos(x', g); an image is
   relevant when it contains the concept. Average precision and reciprocal rank per steered
   embedding, averaged over sources: mAP and MRR per (concept, α). α = 0 is the unsteered baseline.

Mentions (`mention_matrix`): case-insensitive, whole words, the words of a multi-word name joined
by spaces, hyphens or nothing ("hot dog", "hot-dog", "hotdog"); the last word also in its plural
("dogs", "buses", "knives", "people" for "person", "mice" for "mouse"); optional aliases per concept
(`COCO_ALIASES`: "sofa" for couch, "television" for tv, ...). A mention inside a longer name of
another concept does not count: "a hot dog" mentions hot dog, not dog; "a teddy bear" not bear; "a
dog eating a hot dog" both.

Ranks are pessimistic, as everywhere in this package: among equal scores, non-relevant images come
first. Everything for one concept is vectorised over sources × α (chunks of about `batch_size`
steered embeddings, memory O(batch_size · M)); since ranking a row by cosine is ranking it by the
dot product with the unit gallery, x'·ĝ = x·ĝ + α d̂·ĝ and one matmul serves every α.

Where this differs from the authors' code: they steer the SAE's reconstruction of the source
(encode, add α/‖d_j‖ to latent j, decode), not the embedding the paper names (pass reconstructions
as `source_embeddings` to reproduce theirs); they decide which images contain a concept by whether
a caption mentions it (here: the caller's category labels, COCO's instance annotations); their
caption match is the exact lower-case phrase, so "dogs" is not a mention of dog and "hot dog" is;
and their ranking breaks ties by image order.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from xsae.metrics.monosemanticity import activation_matrix
from xsae.sae import Codes

log = logging.getLogger(__name__)

COCO_CATEGORIES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

#: Other words captions use for a COCO category (each also matched in its plural).
COCO_ALIASES: dict[str, tuple[str, ...]] = {
    "bicycle": ("bike",),
    "motorcycle": ("motorbike", "motor bike"),
    "airplane": ("plane", "aeroplane", "jet", "jetliner", "airliner"),
    "traffic light": ("stop light", "traffic signal"),
    "fire hydrant": ("hydrant",),
    "parking meter": ("meter",),
    "handbag": ("purse",),
    "backpack": ("back pack",),
    "sports ball": ("ball",),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt"),
    "tennis racket": ("racket", "racquet"),
    "donut": ("doughnut",),
    "couch": ("sofa",),
    "potted plant": ("plant", "houseplant"),
    "dining table": ("table",),
    "tv": ("television",),
    "cell phone": ("phone", "cellphone", "smartphone"),
    "refrigerator": ("fridge",),
    "teddy bear": ("teddy",),
    "hair drier": ("hair dryer", "blow dryer", "blow drier"),
}

_IRREGULAR_PLURALS = {"person": ("people",), "mouse": ("mice",), "man": ("men",), "woman": ("women",),
                      "child": ("children",), "foot": ("feet",), "tooth": ("teeth",)}


# ---- caption mentions -----------------------------------------------------------------------------
def _word_forms(word: str) -> list[str]:
    """The word and its English plural(s)."""
    forms = [word]
    if re.search(r"(s|x|z|ch|sh)$", word):
        forms.append(word + "es")
    elif re.search(r"[^aeiou]y$", word):
        forms.append(word[:-1] + "ies")
    elif word.endswith("fe"):
        forms += [word + "s", word[:-2] + "ves"]
    elif word.endswith("f"):
        forms += [word + "s", word[:-1] + "ves"]
    elif word.endswith("o"):
        forms += [word + "s", word + "es"]
    else:
        forms.append(word + "s")
    return forms + list(_IRREGULAR_PLURALS.get(word, ()))


def _phrase_regex(phrase: str) -> str:
    words = phrase.lower().split()
    if not words:
        raise ValueError(f"empty concept phrase {phrase!r}")
    last = "|".join(re.escape(f) for f in sorted(_word_forms(words[-1]), key=len, reverse=True))
    prefix = "".join(re.escape(w) + r"[\s\-]*" for w in words[:-1])
    return rf"\b{prefix}(?:{last})\b"


def _contains_words(longer: Sequence[str], shorter: Sequence[str]) -> bool:
    n = len(shorter)
    return len(longer) > n and any(tuple(longer[i:i + n]) == tuple(shorter)
                                   for i in range(len(longer) - n + 1))


def mention_matrix(captions: Sequence[str], concepts: Sequence[str],
                   aliases: Mapping[str, Sequence[str]] | None = None) -> np.ndarray:
    """bool `[N_cap, C]`: caption i mentions concept c (rules in the module docstring).

    `aliases`: extra phrases per concept name (e.g. `COCO_ALIASES`); None: the names alone.
    """
    if len(set(concepts)) != len(concepts):
        raise ValueError("concepts contains duplicate names")
    aliases = aliases or {}
    unknown = sorted(set(aliases) - set(concepts))
    if unknown:
        raise ValueError(f"aliases given for concepts not in the list: {unknown}")
    phrases = [[c, *aliases.get(c, ())] for c in concepts]
    words = [[tuple(p.lower().split()) for p in group] for group in phrases]
    texts = [str(t).lower() for t in captions]
    out = np.zeros((len(texts), len(concepts)), dtype=bool)
    for c, group in enumerate(phrases):
        pattern = re.compile("|".join(_phrase_regex(p) for p in group))
        shadows = [p for other, other_words in enumerate(words) if other != c
                   for p, w in zip(phrases[other], other_words, strict=True)
                   if any(_contains_words(w, own) for own in words[c])]
        shadow = re.compile("|".join(_phrase_regex(p) for p in shadows)) if shadows else None
        for i, text in enumerate(texts):
            if shadow is not None:
                text = shadow.sub(" ", text)
            out[i, c] = pattern.search(text) is not None
    return out


def membership_matrix(labels: Sequence[Sequence[str]] | np.ndarray, concepts: Sequence[str]) -> np.ndarray:
    """bool `[N, C]` from per-sample label-name lists (as the COCO manifest's `labels`), or a bool
    `[N, C]` array checked and passed through."""
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        if labels.shape[1] != len(concepts):
            raise ValueError(f"membership matrix has {labels.shape[1]} columns for {len(concepts)} concepts")
        return labels.astype(bool)
    column = {name: c for c, name in enumerate(concepts)}
    out = np.zeros((len(labels), len(concepts)), dtype=bool)
    for i, names in enumerate(labels):
        for name in names:
            if name in column:
                out[i, column[name]] = True
    return out


def _concept_rng(seed: int, concept: str, stream: int) -> np.random.Generator:
    """A generator that depends on the seed and the concept's name, not its position in the list."""
    return np.random.default_rng([seed, zlib.crc32(concept.encode("utf-8")), stream])


# ---- concept latents ------------------------------------------------------------------------------
def concept_latents(caption_codes: Codes | torch.Tensor | np.ndarray, mentions: np.ndarray,
                    concepts: Sequence[str], n_latents: int, *, seed: int = 0) -> pd.DataFrame:
    """One row per concept: (concept, latent, mean_difference, n_positive, n_negative).

    `caption_codes`: the aligned text SAE's codes of N_cap captions; `mentions`: bool `[N_cap, C]`
    (`mention_matrix`). `latent` is −1 (and `mean_difference` NaN) for a concept that no caption
    mentions or that every caption mentions: there is nothing to contrast.
    """
    activations = activation_matrix(caption_codes, n_latents)  # [N_cap, L]
    mentions = np.asarray(mentions, dtype=bool)
    if mentions.shape != (activations.shape[0], len(concepts)):
        raise ValueError(f"mentions has shape {list(mentions.shape)}, expected "
                         f"[{activations.shape[0]}, {len(concepts)}] (captions × concepts)")
    rows, cols, weights = [], [], []
    n_positive = mentions.sum(axis=0)
    n_negative = np.zeros(len(concepts), dtype=np.int64)
    for c, concept in enumerate(concepts):
        positives = np.nonzero(mentions[:, c])[0]
        pool = np.nonzero(~mentions[:, c])[0]
        if positives.size == 0 or pool.size == 0:
            continue
        negatives = _concept_rng(seed, concept, 0).choice(pool, size=min(positives.size, pool.size),
                                                          replace=False)
        n_negative[c] = negatives.size
        rows += [np.full(positives.size, c), np.full(negatives.size, c)]
        cols += [positives, negatives]
        weights += [np.full(positives.size, 1.0 / positives.size),
                    np.full(negatives.size, -1.0 / negatives.size)]
    contrast = sp.csr_array((np.concatenate(weights) if weights else np.zeros(0),
                             (np.concatenate(rows) if rows else np.zeros(0, np.int64),
                              np.concatenate(cols) if cols else np.zeros(0, np.int64))),
                            shape=(len(concepts), activations.shape[0]))
    difference = (contrast @ activations).toarray()  # [C, L] mean over positives − mean over negatives
    usable = n_negative > 0
    latent = np.where(usable, difference.argmax(axis=1), -1)
    best = np.where(usable, difference[np.arange(len(concepts)), np.maximum(latent, 0)], np.nan)
    return pd.DataFrame({"concept": list(concepts), "latent": latent, "mean_difference": best,
                         "n_positive": n_positive.astype(np.int64), "n_negative": n_negative})


# ---- ranking ------------------------------------------------------------------------------------
def average_precision(scores: torch.Tensor, relevant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(AP `[B]`, reciprocal rank `[B]`) of each row of `scores` `[B, M]` against bool `relevant` `[M]`.

    Pessimistic ties: the i-th best relevant item (score r_i) has rank i + #{non-relevant ≥ r_i};
    AP = mean_i i / rank_i, RR = 1 / rank_1. Needs at least one relevant item.
    """
    relevant = relevant.to(torch.bool)
    if relevant.dim() != 1 or relevant.shape[0] != scores.shape[1]:
        raise ValueError(f"relevant must be [{scores.shape[1]}], got {list(relevant.shape)}")
    n_relevant = int(relevant.sum())
    if n_relevant == 0:
        raise ValueError("no relevant item: average precision is undefined")
    relevant = relevant.to(scores.device)
    hits = scores[:, relevant].sort(dim=1, descending=True).values.contiguous()  # [B, R]
    others = scores[:, ~relevant].sort(dim=1).values.contiguous()  # [B, M − R] ascending
    # non-relevant scores ≥ each hit = all of them − those strictly below it
    beaten_by = others.shape[1] - torch.searchsorted(others, hits, side="left")
    ranks = torch.arange(1, n_relevant + 1, device=scores.device, dtype=scores.dtype) + beaten_by
    positions = torch.arange(1, n_relevant + 1, device=scores.device, dtype=scores.dtype)
    return (positions / ranks).mean(dim=1), 1.0 / ranks[:, 0]


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(torch.finfo(x.dtype).tiny), 0.0)


def steering_retrieval(image_embeddings: torch.Tensor, image_concepts: np.ndarray, concepts: Sequence[str],
                       latents: Sequence[int] | np.ndarray, image_decoder: torch.Tensor, *,
                       alphas: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0), n_sources: int = 100,
                       seed: int = 0, source_embeddings: torch.Tensor | None = None,
                       exclude_source: bool = False, batch_size: int = 1024,
                       dtype: torch.dtype = torch.float64) -> pd.DataFrame:
    """Tidy rows (concept, alpha, mAP, MRR, latent, n_sources, n_relevant), steps 2–4 of the protocol.

    `image_embeddings`: the gallery `[M, d]` (test images); `image_concepts`: bool `[M, C]`;
    `latents`: the concept latent per concept (−1: skip); `image_decoder`: the image SAE's decoder
    `[L, d]` (row j = latent j's direction, `SparseAutoencoder.dec_weight[image_stream]`).
    `source_embeddings` (`[M, d]`, default the gallery itself) are what gets steered.
    `exclude_source`: leave each source out of its own ranking (the paper keeps it).
    Concepts that cannot be evaluated (no latent, no image containing the concept, none without
    it) are logged and left out.
    """
    gallery = image_embeddings.detach().to(dtype)
    n_gallery, width = gallery.shape
    concept_mask = np.asarray(image_concepts, dtype=bool)
    if concept_mask.shape != (n_gallery, len(concepts)):
        raise ValueError(f"image_concepts has shape {list(concept_mask.shape)}, expected "
                         f"[{n_gallery}, {len(concepts)}] (images × concepts)")
    latents = np.asarray(latents, dtype=np.int64)
    if latents.shape != (len(concepts),):
        raise ValueError(f"latents has shape {list(latents.shape)}, expected [{len(concepts)}]")
    decoder = image_decoder.detach().to(dtype=dtype, device=gallery.device)
    if decoder.dim() != 2 or decoder.shape[1] != width:
        raise ValueError(f"image_decoder must be [L, {width}], got {list(image_decoder.shape)}")
    if latents.max(initial=-1) >= decoder.shape[0]:
        raise ValueError(f"latent {int(latents.max())} outside the decoder's {decoder.shape[0]} rows")
    sources_all = (gallery if source_embeddings is None
                   else source_embeddings.detach().to(dtype=dtype, device=gallery.device))
    if sources_all.shape != gallery.shape:
        raise ValueError(f"source_embeddings has shape {list(sources_all.shape)}, "
                         f"expected {list(gallery.shape)}")
    if n_sources < 1 or batch_size < 1:
        raise ValueError(f"n_sources and batch_size must be >= 1, got {n_sources} and {batch_size}")
    alpha = torch.as_tensor(list(alphas), dtype=dtype, device=gallery.device)
    if alpha.dim() != 1 or alpha.numel() == 0:
        raise ValueError("alphas must be a non-empty list of numbers")
    unit_gallery = _unit_rows(gallery)

    rows = []
    for c, concept in enumerate(concepts):
        relevant = torch.from_numpy(concept_mask[:, c])
        candidates = np.nonzero(~concept_mask[:, c])[0]
        if latents[c] < 0 or not relevant.any() or candidates.size == 0:
            log.warning("steering: concept %r skipped (latent %d, %d images with it, %d without)",
                        concept, latents[c], int(relevant.sum()), candidates.size)
            continue
        direction = decoder[latents[c]]
        if float(direction.norm()) == 0.0:
            raise ValueError(f"decoder row {latents[c]} (concept {concept!r}) is all zero")
        direction = direction / direction.norm()
        draw = _concept_rng(seed, concept, 1)
        chosen = np.sort(draw.choice(candidates, size=min(n_sources, candidates.size), replace=False))
        source_rows = torch.from_numpy(chosen).to(gallery.device)
        # cos(x', g) = (x·ĝ + α d̂·ĝ) / ‖x'‖, and the positive 1/‖x'‖ does not change the order of
        # a query's row: one matmul per source chunk serves every α
        along_direction = unit_gallery @ direction  # [M]
        ap = torch.empty(alpha.numel(), chosen.size, dtype=dtype)
        rr = torch.empty(alpha.numel(), chosen.size, dtype=dtype)
        sources_per_chunk = max(1, batch_size // alpha.numel())
        for lo in range(0, chosen.size, sources_per_chunk):
            rows_here = source_rows[lo:lo + sources_per_chunk]
            base = sources_all[rows_here] @ unit_gallery.T  # [S', M]
            scores = base.unsqueeze(0) + alpha.view(-1, 1, 1) * along_direction.view(1, 1, -1)  # [A, S', M]
            if exclude_source:
                scores[:, torch.arange(rows_here.shape[0], device=scores.device), rows_here] = float("-inf")
            block_ap, block_rr = average_precision(scores.reshape(-1, n_gallery), relevant)
            ap[:, lo:lo + rows_here.shape[0]] = block_ap.view(alpha.numel(), -1).cpu()
            rr[:, lo:lo + rows_here.shape[0]] = block_rr.view(alpha.numel(), -1).cpu()
        ap, rr = ap.mean(dim=1), rr.mean(dim=1)
        for a in range(alpha.numel()):
            rows.append({"concept": concept, "alpha": float(alpha[a]), "mAP": float(ap[a]),
                         "MRR": float(rr[a]), "latent": int(latents[c]), "n_sources": int(chosen.size),
                         "n_relevant": int(relevant.sum())})
    columns = ["concept", "alpha", "mAP", "MRR", "latent", "n_sources", "n_relevant"]
    return pd.DataFrame(rows, columns=columns)


def concept_steering(caption_codes: Codes | torch.Tensor | np.ndarray, captions: Sequence[str],
                     image_embeddings: torch.Tensor, image_concepts: Sequence[Sequence[str]] | np.ndarray,
                     image_decoder: torch.Tensor, n_latents: int, *,
                     concepts: Sequence[str] = COCO_CATEGORIES,
                     aliases: Mapping[str, Sequence[str]] | None = None,
                     alphas: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0), n_sources: int = 100,
                     seed: int = 0, source_embeddings: torch.Tensor | None = None,
                     exclude_source: bool = False, batch_size: int = 1024) -> pd.DataFrame:
    """Figure 7 end to end: tidy rows (concept, alpha, mAP, MRR, latent, n_sources, n_relevant,
    mean_difference, n_positive_captions).

    `caption_codes`: aligned text codes of the `captions` (one row per caption); `image_concepts`:
    per image, the names of the concepts it contains (or bool `[M, C]`); the rest as in
    `concept_latents` and `steering_retrieval`.
    """
    mentions = mention_matrix(captions, concepts, aliases)
    chosen = concept_latents(caption_codes, mentions, concepts, n_latents, seed=seed)
    table = steering_retrieval(image_embeddings, membership_matrix(image_concepts, concepts), concepts,
                               chosen["latent"].to_numpy(), image_decoder, alphas=alphas, n_sources=n_sources,
                               seed=seed, source_embeddings=source_embeddings, exclude_source=exclude_source,
                               batch_size=batch_size)
    extra = chosen[["concept", "mean_difference", "n_positive"]].rename(
        columns={"n_positive": "n_positive_captions"})
    return table.merge(extra, on="concept", how="left")
