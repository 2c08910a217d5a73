"""xsae.metrics.steering: caption mentions, concept latents, pessimistic AP/RR and Figure 7 steering."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from xsae.metrics.steering import (
    COCO_ALIASES,
    COCO_CATEGORIES,
    average_precision,
    concept_latents,
    concept_steering,
    membership_matrix,
    mention_matrix,
    steering_retrieval,
)
from xsae.sae import Codes

# ---- mentions ----------------------------------------------------------------------------------------
CAPTIONS = {
    "Two dogs play in a park": {"dog"},
    "A hot dog on a plate": {"hot dog"},
    "A dog eating a hot dog": {"dog", "hot dog"},
    "A teddy bear sits on a bed": {"teddy bear", "bed"},
    "THE BEAR": {"bear"},
    "a dogged pursuit": set(),
    "a HOTDOG stand and a hot-dog": {"hot dog"},
    "buses and a bus": {"bus"},
    "knives, forks and a spoon": {"knife", "fork", "spoon"},
    "people walking": {"person"},
    "Traffic lights at dusk": {"traffic light"},
    "mice near a keyboard": {"mouse", "keyboard"},
    "a sofa and a tv": {"tv"},  # sofa needs the alias
    "a man on a motor bike": set(),  # motor bike needs the alias
}


def names(row: np.ndarray) -> set[str]:
    return {COCO_CATEGORIES[c] for c in np.nonzero(row)[0]}


def test_mentions_words_plurals_and_nested_names():
    matrix = mention_matrix(list(CAPTIONS), COCO_CATEGORIES)
    assert matrix.shape == (len(CAPTIONS), 80) and matrix.dtype == bool
    for row, expected in zip(matrix, CAPTIONS.values(), strict=True):
        assert names(row) == expected
    with_aliases = mention_matrix(["a sofa and a tv", "a man on a motor bike", "a bike", "a motorbike"],
                                  COCO_CATEGORIES, COCO_ALIASES)
    assert [names(r) for r in with_aliases] == [{"couch", "tv"}, {"motorcycle"}, {"bicycle"}, {"motorcycle"}]


def test_mention_input_checks():
    with pytest.raises(ValueError, match="duplicate"):
        mention_matrix(["a dog"], ["dog", "dog"])
    with pytest.raises(ValueError, match="not in the list"):
        mention_matrix(["a dog"], ["dog"], {"cat": ("kitten",)})
    assert membership_matrix([["dog"], [], ["cat", "dog", "unlisted"]], ["dog", "cat"]).tolist() == [
        [True, False], [False, False], [True, True]]
    with pytest.raises(ValueError, match="columns"):
        membership_matrix(np.zeros((2, 3), dtype=bool), ["dog", "cat"])


# ---- concept latents -----------------------------------------------------------------------------
def test_concept_latent_is_the_contrast_not_the_largest_mean():
    # latent 5 fires (2.0) on every caption: highest mean on dog captions, but no contrast;
    # latent 3 fires (1.0) only on dog captions; latent 1 on the cat caption
    captions = ["a dog", "two dogs", "a cat", "a car", "a tree", "a house"]
    indices = torch.tensor([[5, 3], [5, 3], [5, 1], [5, 0], [5, 0], [5, 0]])
    values = torch.tensor([[2.0, 1.0], [2.0, 1.0], [2.0, 1.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    codes = Codes(values, indices)
    concepts = ["dog", "zebra", "cat"]
    mentions = mention_matrix(captions, concepts)
    table = concept_latents(codes, mentions, concepts, 8, seed=0)
    assert table["concept"].tolist() == concepts
    assert table["latent"].tolist()[:2] == [3, -1]
    assert table["mean_difference"][0] == pytest.approx(1.0)
    assert np.isnan(table["mean_difference"][1])
    assert table["n_positive"].tolist() == [2, 0, 1] and table["n_negative"].tolist() == [2, 0, 1]
    assert table["latent"][2] == 1 and table["mean_difference"][2] == pytest.approx(1.0)
    # dense codes give the same; the result per concept does not depend on the concept order
    assert table.equals(concept_latents(codes.dense(8), mentions, concepts, 8, seed=0))
    reordered = concept_latents(codes, mentions[:, ::-1], concepts[::-1], 8, seed=0)
    assert reordered.iloc[::-1].reset_index(drop=True).equals(table)


def test_negatives_are_a_seeded_same_size_sample():
    # two dog captions (latent 3 = 10); four others with latent 3 = [0, 0, 0, 4]: a 2-caption negative
    # set gives a difference of 10 (without the 4) or 8 (with it); all four would give 9
    captions = ["a dog", "a dog", "x", "y", "z", "w"]
    values = torch.tensor([[10.0], [10.0], [0.0], [0.0], [0.0], [4.0]])
    codes = Codes(values, torch.full((6, 1), 3))
    mentions = mention_matrix(captions, ["dog"])
    seen = {float(concept_latents(codes, mentions, ["dog"], 4, seed=s)["mean_difference"][0])
            for s in range(20)}
    assert seen == {8.0, 10.0}
    first = concept_latents(codes, mentions, ["dog"], 4, seed=7)
    assert first.equals(concept_latents(codes, mentions, ["dog"], 4, seed=7))
    with pytest.raises(ValueError, match="mentions has shape"):
        concept_latents(codes, mentions[:3], ["dog"], 4)


# ---- average precision -------------------------------------------------------------------------------
def reference_ap_rr(scores: np.ndarray, relevant: np.ndarray) -> tuple[float, float]:
    """Sort by score descending with relevant items after their ties; AP and RR from the ranks."""
    order = np.lexsort((relevant, -scores))
    ranks = np.nonzero(relevant[order])[0] + 1
    return float(np.mean(np.arange(1, ranks.size + 1) / ranks)), 1.0 / ranks[0]


def test_average_precision_by_hand_and_against_references():
    scores = torch.tensor([[0.9, 0.8, 0.8, 0.1, 0.5]], dtype=torch.float64)
    relevant = torch.tensor([False, True, False, True, False])
    # pessimistic: order 0.9 (n), 0.8 (n), 0.8 (r), 0.5 (n), 0.1 (r): relevant at ranks 3 and 5
    ap, rr = average_precision(scores, relevant)
    assert ap.item() == pytest.approx((1 / 3 + 2 / 5) / 2) and rr.item() == pytest.approx(1 / 3)

    g = np.random.default_rng(0)
    tied = np.round(g.random((30, 25)), 1)  # many ties
    relevant = g.random(25) < 0.3
    ap, rr = average_precision(torch.from_numpy(tied), torch.from_numpy(relevant))
    expected = np.array([reference_ap_rr(row, relevant) for row in tied])
    np.testing.assert_allclose(ap.numpy(), expected[:, 0], rtol=1e-12)
    np.testing.assert_allclose(rr.numpy(), expected[:, 1], rtol=1e-12)

    distinct = g.random((10, 40))  # no ties: scikit-learn's AP is the same quantity
    ap, _ = average_precision(torch.from_numpy(distinct), torch.from_numpy(relevant.repeat(2)[:40]))
    sk = [average_precision_score(relevant.repeat(2)[:40], row) for row in distinct]
    np.testing.assert_allclose(ap.numpy(), sk, rtol=1e-12)

    everything = average_precision(torch.rand(2, 3, dtype=torch.float64), torch.ones(3, dtype=torch.bool))
    assert everything[0].tolist() == [1.0, 1.0] and everything[1].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="no relevant"):
        average_precision(torch.rand(2, 3), torch.zeros(3, dtype=torch.bool))


# ---- steering ----------------------------------------------------------------------------------------
def constructed_gallery(seed: int = 0):
    """Relevant images lie within ~19° of e0 (cos ≥ 0.945); the others are nearly orthogonal to it
    (cos ≤ 0.1). Steering any unit-ish source by α ≥ 3 along e0 must rank every relevant image first:
    relevant scores ≥ −1.01 + 0.945 α > 1.01 + 0.1 α ≥ any other score."""
    g = np.random.default_rng(seed)
    n_relevant, n_other, d = 12, 30, 4
    relevant = np.column_stack([np.ones(n_relevant), 0.2 * g.uniform(-1, 1, (n_relevant, d - 1))])
    rest = g.normal(size=(n_other, d - 1))
    rest /= np.linalg.norm(rest, axis=1, keepdims=True)
    others = np.column_stack([0.1 * g.uniform(-1, 1, n_other), rest])
    gallery = np.vstack([others[:10], relevant, others[10:]])  # relevant rows interleaved: 10..21
    contains = np.zeros((len(gallery), 1), dtype=bool)
    contains[10:22] = True
    decoder = g.normal(size=(6, d))
    decoder[4] = [2.0, 0.0, 0.0, 0.0]  # latent 4's image direction is e0 (not unit: normalised inside)
    return torch.from_numpy(gallery), contains, torch.from_numpy(decoder)


def reference_steering(gallery, contains, decoder, latent, alphas, sources, exclude_source=False):
    """Plain loops: steer each source, cosine with every gallery row, pessimistic AP and RR."""
    gallery, decoder = gallery.numpy(), decoder.numpy()
    direction = decoder[latent] / np.linalg.norm(decoder[latent])
    unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    out = []
    for alpha in alphas:
        aps, rrs = [], []
        for s in sources:
            steered = gallery[s] + alpha * direction
            scores = unit @ (steered / np.linalg.norm(steered))
            if exclude_source:
                scores[s] = -np.inf
            ap, rr = reference_ap_rr(scores, contains)
            aps.append(ap)
            rrs.append(rr)
        out.append((np.mean(aps), np.mean(rrs)))
    return out


def test_steering_along_the_concept_direction_ranks_its_images_first():
    gallery, contains, decoder = constructed_gallery()
    alphas = (0.0, 3.0, 10.0)
    table = steering_retrieval(gallery, contains, ["dog"], [4], decoder, alphas=alphas, n_sources=100)
    assert table.columns.tolist() == ["concept", "alpha", "mAP", "MRR", "latent", "n_sources", "n_relevant"]
    assert table["alpha"].tolist() == list(alphas)
    assert table["n_sources"].tolist() == [30] * 3 and table["n_relevant"].tolist() == [12] * 3
    assert table["mAP"].tolist()[1:] == [1.0, 1.0] and table["MRR"].tolist()[1:] == [1.0, 1.0]
    # α = 0 is the unsteered baseline: all 30 images without the concept are the sources
    sources = np.nonzero(~contains[:, 0])[0]
    for exclude in (False, True):
        baseline = steering_retrieval(gallery, contains, ["dog"], [4], decoder, alphas=(0.0,),
                                      exclude_source=exclude)
        expected = reference_steering(gallery, contains[:, 0], decoder, 4, (0.0,), sources, exclude)[0]
        assert (baseline["mAP"][0], baseline["MRR"][0]) == pytest.approx(expected, rel=1e-12)
        assert baseline["mAP"][0] < 0.5
    # steering along another latent's direction does not do it
    other = steering_retrieval(gallery, contains, ["dog"], [0], decoder, alphas=(10.0,))
    assert other["mAP"][0] < 1.0


@pytest.mark.parametrize(("batch_size", "exclude_source"), [(7, False), (1024, False), (5, True)])
def test_steering_equals_plain_loops_on_random_data(batch_size, exclude_source):
    g = torch.Generator().manual_seed(4)
    gallery = torch.randn(50, 6, generator=g, dtype=torch.float64)
    decoder = torch.randn(9, 6, generator=g, dtype=torch.float64)
    contains = (torch.rand(50, 2, generator=g) < 0.3).numpy()
    alphas = (0.0, 0.5, 2.0)
    table = steering_retrieval(gallery, contains, ["a", "b"], [2, 7], decoder, alphas=alphas, n_sources=200,
                               batch_size=batch_size, exclude_source=exclude_source)
    for c, latent in enumerate([2, 7]):
        sources = np.nonzero(~contains[:, c])[0]
        expected = reference_steering(gallery, contains[:, c], decoder, latent, alphas, sources,
                                      exclude_source)
        got = table[table["concept"] == "ab"[c]][["mAP", "MRR"]].to_numpy()
        np.testing.assert_allclose(got, np.array(expected), rtol=1e-12)


def test_sources_are_seeded_and_capped():
    gallery, contains, decoder = constructed_gallery()
    kwargs = dict(alphas=(0.0, 1.0), n_sources=5)
    first = steering_retrieval(gallery, contains, ["dog"], [4], decoder, seed=3, **kwargs)
    assert first.equals(steering_retrieval(gallery, contains, ["dog"], [4], decoder, seed=3, **kwargs))
    assert first["n_sources"].tolist() == [5, 5]
    runs = {tuple(steering_retrieval(gallery, contains, ["dog"], [4], decoder, seed=s, **kwargs)["mAP"])
            for s in range(5)}
    assert len(runs) > 1  # different seeds draw different sources


def test_source_embeddings_are_what_gets_steered():
    gallery, contains, decoder = constructed_gallery()
    shifted = gallery.clone()
    shifted[:, 0] += 5.0  # every source already points along e0
    table = steering_retrieval(gallery, contains, ["dog"], [4], decoder, alphas=(0.0,),
                               source_embeddings=shifted)
    assert table["mAP"][0] == 1.0


def test_unusable_concepts_are_skipped(caplog):
    gallery, contains, decoder = constructed_gallery()
    both = np.column_stack([contains, np.zeros(len(contains), bool), contains])
    with caplog.at_level(logging.WARNING, logger="xsae.metrics.steering"):
        table = steering_retrieval(gallery, both, ["dog", "nothing", "no latent"], [4, 4, -1], decoder,
                                   alphas=(3.0,))
    assert table["concept"].tolist() == ["dog"]
    assert "nothing" in caplog.text and "no latent" in caplog.text
    with pytest.raises(ValueError, match="image_concepts"):
        steering_retrieval(gallery, both[:5], ["dog", "nothing", "no latent"], [4, 4, -1], decoder)
    with pytest.raises(ValueError, match="outside the decoder"):
        steering_retrieval(gallery, contains, ["dog"], [9], decoder)
    with pytest.raises(ValueError, match="image_decoder"):
        steering_retrieval(gallery, contains, ["dog"], [4], decoder[:, :3])


def test_concept_steering_end_to_end():
    gallery, contains, decoder = constructed_gallery()
    labels = [["dog"] if has else ["cat"] for has in contains[:, 0]]
    captions = ["a dog on grass", "two dogs", "a cat", "a cat on a mat", "a car", "a bird"]
    indices = torch.tensor([[4, 1], [4, 1], [2, 1], [2, 1], [0, 1], [3, 1]])
    values = torch.tensor([[3.0, 1.0], [2.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    table = concept_steering(Codes(values, indices), captions, gallery, labels, decoder, 6,
                             concepts=["dog"], alphas=(0.0, 3.0))
    assert table.columns.tolist() == ["concept", "alpha", "mAP", "MRR", "latent", "n_sources", "n_relevant",
                                      "mean_difference", "n_positive_captions"]
    assert table["latent"].tolist() == [4, 4] and table["n_positive_captions"].tolist() == [2, 2]
    assert table["mean_difference"].tolist() == [2.5, 2.5]
    assert table["mAP"][1] == 1.0 and table["mAP"][0] < 0.5
