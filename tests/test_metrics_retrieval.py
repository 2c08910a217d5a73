"""xsae.metrics.retrieval: pessimistic cosine ranks for paired retrieval and SPARC Table 14 metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xsae.metrics.retrieval import retrieval_metrics, retrieval_ranks
from xsae.sae import Codes

GALLERY = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
QUERIES = torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
# q0: target 1, tied with g3 (same direction)       -> rank 2 (pessimistic)
# q1: target g1 scores 1, the best                  -> rank 1
# q2: target g2 scores 0.707, below g1 (1)          -> rank 2
# q3: all-zero query: every score is 0              -> rank 5
# q4: target g4 is all-zero: score 0, the lowest    -> rank 5
EXPECTED_RANKS = [2, 1, 2, 5, 5]


def as_codes(x: torch.Tensor) -> Codes:
    """Dense `[N, d]` as codes with k = d (zeros kept as selected-but-zero entries)."""
    return Codes(x.clone(), torch.arange(x.shape[1]).expand(x.shape[0], -1).clone())


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_designed_ranks(batch_size):
    for queries in (QUERIES, as_codes(QUERIES)):
        for gallery in (GALLERY, as_codes(GALLERY)):
            ranks = retrieval_ranks(queries, gallery, batch_size=batch_size)
            assert ranks.dtype == torch.long
            assert ranks.tolist() == EXPECTED_RANKS


def test_metrics_by_hand():
    metrics = retrieval_metrics(torch.tensor(EXPECTED_RANKS))
    assert metrics == pytest.approx({"R@1": 0.2, "R@5": 1.0, "R@10": 1.0, "median_rank": 2.0,
                                     "MRR": (0.5 + 1 + 0.5 + 0.2 + 0.2) / 5})
    even = retrieval_metrics(np.array([1, 3, 8, 20]))
    assert even["median_rank"] == 5.5 and even["R@5"] == 0.5 and even["R@10"] == 0.75
    with pytest.raises(ValueError):
        retrieval_metrics([0, 1])
    with pytest.raises(ValueError):
        retrieval_metrics([])


def test_all_zero_codes_rank_last():
    zeros = Codes(torch.zeros(6, 2), torch.tensor([[0, 1]] * 6))
    assert retrieval_ranks(zeros, zeros).tolist() == [6] * 6
    assert retrieval_ranks(zeros, zeros.dense(4)).tolist() == [6] * 6
    assert retrieval_metrics(retrieval_ranks(zeros, zeros))["R@1"] == 0.0


def reference_ranks(queries: np.ndarray, gallery: np.ndarray) -> list[int]:
    """Cosine in plain Python floats, rank by lexsort with the target placed after its ties."""

    def unit(row):
        norm = math.sqrt(sum(v * v for v in row))
        return [v / norm for v in row] if norm > 0 else [0.0] * len(row)

    gallery_unit = [unit(row) for row in gallery.tolist()]
    ranks = []
    for i, query in enumerate(queries.tolist()):
        q = unit(query)
        scores = np.array([sum(a * b for a, b in zip(q, g, strict=True)) for g in gallery_unit])
        is_target = np.arange(len(gallery_unit)) == i
        order = np.lexsort((is_target, -scores))  # by score descending, target last among equals
        ranks.append(int(np.nonzero(order == i)[0][0]) + 1)
    return ranks


def random_sparse(g: torch.Generator, n: int, n_latents: int, k: int) -> Codes:
    indices = torch.stack([torch.randperm(n_latents, generator=g)[:k] for _ in range(n)])
    values = torch.rand(n, k, generator=g, dtype=torch.float64) * (torch.rand(n, k, generator=g) > 0.2)
    return Codes(values, indices)


@pytest.mark.parametrize("batch_size", [3, 1000])
def test_matches_reference_on_codes_with_ties(batch_size):
    g = torch.Generator().manual_seed(0)
    queries = random_sparse(g, 40, 12, 2)
    gallery = random_sparse(g, 40, 12, 2)
    # exact ties: duplicated gallery rows (including targets), a duplicated query, zero rows
    for dst, src in ((5, 9), (12, 3), (20, 21), (30, 31)):
        gallery.values[dst], gallery.indices[dst] = gallery.values[src], gallery.indices[src]
    queries.values[7], queries.indices[7] = queries.values[8], queries.indices[8]
    queries.values[15] = 0.0
    gallery.values[16] = 0.0
    expected = reference_ranks(queries.dense(12).numpy(), gallery.dense(12).numpy())
    assert max(expected) == 40  # the zero query and the zero target
    for q in (queries, queries.dense(12)):
        for gal in (gallery, gallery.dense(12)):
            assert retrieval_ranks(q, gal, batch_size=batch_size).tolist() == expected


def test_matches_reference_on_dense_features_with_distractors():
    g = torch.Generator().manual_seed(1)
    queries = torch.randn(25, 6, generator=g, dtype=torch.float64)
    gallery = torch.randn(32, 6, generator=g, dtype=torch.float64)
    gallery[3] = gallery[10]
    gallery[4] = 2 * gallery[4]
    expected = reference_ranks(queries.numpy(), gallery.numpy())
    assert retrieval_ranks(queries, gallery, batch_size=4).tolist() == expected
    assert retrieval_ranks(queries.float(), gallery.float()).tolist() == expected


def test_self_retrieval_at_larger_n_is_perfect():
    g = torch.Generator().manual_seed(2)
    codes = random_sparse(g, 4000, 512, 4)
    codes.values.uniform_(0.1, 1.0, generator=g)  # four active latents per row: no two rows parallel
    ranks = retrieval_ranks(codes, codes, batch_size=512)
    assert ranks.tolist() == [1] * 4000
    assert retrieval_metrics(ranks) == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0, "MRR": 1.0}


def test_input_checks():
    with pytest.raises(ValueError):
        retrieval_ranks(QUERIES, GALLERY[:3])
    with pytest.raises(ValueError):
        retrieval_ranks(QUERIES, torch.zeros(5, 3))
    with pytest.raises(ValueError):
        retrieval_ranks(Codes(torch.ones(5, 1), torch.full((5, 1), 4)), GALLERY)


def test_dense_device_path_equals_the_sparse_path():
    """The matmul path (used on a GPU) ranks exactly like the sparse-product path, ties included."""
    g = torch.Generator().manual_seed(5)
    n, L, k = 60, 40, 3
    indices = torch.stack([torch.randperm(L, generator=g)[:k] for _ in range(n)])
    values = torch.randint(0, 3, (n, k), generator=g).float()  # many zeros and ties
    queries = Codes(values, indices)
    gallery = Codes(torch.roll(values, 1, dims=1), indices)
    sparse = retrieval_ranks(queries, gallery, batch_size=7)
    dense = retrieval_ranks(queries, gallery, batch_size=7, device="cpu")
    assert torch.equal(sparse, dense)
    assert (sparse == n).any(), "an all-zero query must rank last"


# ---- several captions per image --------------------------------------------------------------------
from xsae.metrics.retrieval import multi_caption_ranks, multi_caption_retrieval  # noqa: E402

MC_IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
MC_CAPTIONS = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
MC_OWNER = [0, 0, 1, 2, 1, 3]  # interleaved on purpose
# image→text (only foreign captions can outrank the best own caption):
# i0: own c0, c1 score 1 (tied siblings); foreign c4 also 1            -> 2
# i1: own c2 = 1, c4 = 0; foreign c5 also 1                            -> 2
# i2: own c3 = 1, every other caption 0.707                            -> 1
# i3: all-zero image: best own 0, all five foreign captions tie at 0   -> 6
MC_I2T = [2, 2, 1, 6]
# text→image: c0, c1 -> i0 best (1); c2 -> i1 (1); c3 -> i2 (1);
# c4 = [1, 0] vs own i1 = [0, 1]: 0, tied with i3 (zero), below i0, i2 -> 4; c5 -> own i3 is zero -> 4
MC_T2I = [1, 1, 1, 1, 4, 4]


@pytest.mark.parametrize("batch_size", [1, 2, 256])
def test_multi_caption_designed_ranks(batch_size):
    for images in (MC_IMAGES, as_codes(MC_IMAGES)):
        for captions in (MC_CAPTIONS, as_codes(MC_CAPTIONS)):
            for owner in (MC_OWNER, np.array(MC_OWNER), torch.tensor(MC_OWNER)):
                i2t, t2i = multi_caption_ranks(images, captions, owner, batch_size=batch_size)
                assert i2t.dtype == t2i.dtype == torch.long
                assert i2t.tolist() == MC_I2T and t2i.tolist() == MC_T2I
    i2t, t2i = multi_caption_ranks(as_codes(MC_IMAGES), as_codes(MC_CAPTIONS), MC_OWNER, device="cpu")
    assert i2t.tolist() == MC_I2T and t2i.tolist() == MC_T2I


def test_multi_caption_metrics_by_hand():
    metrics = multi_caption_retrieval(MC_IMAGES, MC_CAPTIONS, MC_OWNER)
    assert metrics["image_to_text"] == pytest.approx(
        {"R@1": 0.25, "R@5": 0.75, "R@10": 1.0, "median_rank": 2.0, "MRR": (0.5 + 0.5 + 1 + 1 / 6) / 4})
    assert metrics["text_to_image"] == pytest.approx(
        {"R@1": 4 / 6, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0, "MRR": (4 + 0.5) / 6})


def reference_multi_caption(images: np.ndarray, captions: np.ndarray, owner: list[int]):
    """Per query: sort by score descending with relevant items after irrelevant ties (plain loops)."""

    def unit(rows):
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)

    img, cap = unit(images.astype(np.float64)), unit(captions.astype(np.float64))
    owner = np.asarray(owner)
    i2t = []
    for i in range(len(img)):
        scores = cap @ img[i]
        relevant = owner == i
        order = np.lexsort((relevant, -scores))  # score descending, relevant last among equals
        i2t.append(int(np.nonzero(relevant[order])[0][0]) + 1)
    t2i = []
    for c in range(len(cap)):
        scores = img @ cap[c]
        relevant = np.arange(len(img)) == owner[c]
        order = np.lexsort((relevant, -scores))
        t2i.append(int(np.nonzero(relevant[order])[0][0]) + 1)
    return i2t, t2i


@pytest.mark.parametrize("batch_size", [3, 1000])
def test_multi_caption_matches_reference_on_codes_with_ties(batch_size):
    g = torch.Generator().manual_seed(11)
    n_images, L = 30, 10
    owner = torch.cat([torch.arange(n_images).repeat(5)[torch.randperm(5 * n_images, generator=g)],
                       torch.arange(0, n_images, 3)])  # 5 captions each, a sixth for every third image
    images = random_sparse(g, n_images, L, 2)
    captions = random_sparse(g, owner.numel(), L, 2)
    images.values.round_(decimals=1)
    captions.values.round_(decimals=1)  # coarse values: many exact ties
    captions.values[4], captions.indices[4] = captions.values[9], captions.indices[9]
    images.values[7] = 0.0
    expected = reference_multi_caption(images.dense(L).numpy(), captions.dense(L).numpy(), owner.tolist())
    for img in (images, images.dense(L)):
        for cap in (captions, captions.dense(L)):
            i2t, t2i = multi_caption_ranks(img, cap, owner, batch_size=batch_size)
            assert (i2t.tolist(), t2i.tolist()) == expected


def test_one_caption_per_image_equals_paired_ranks():
    g = torch.Generator().manual_seed(12)
    images = random_sparse(g, 50, 16, 3)
    captions = random_sparse(g, 50, 16, 3)
    i2t, t2i = multi_caption_ranks(images, captions, torch.arange(50), batch_size=7)
    assert torch.equal(i2t, retrieval_ranks(images, captions))
    assert torch.equal(t2i, retrieval_ranks(captions, images))


def test_multi_caption_input_checks():
    with pytest.raises(ValueError, match="caption_image"):
        multi_caption_ranks(MC_IMAGES, MC_CAPTIONS, MC_OWNER[:-1])
    with pytest.raises(ValueError, match="caption_image"):
        multi_caption_ranks(MC_IMAGES, MC_CAPTIONS, [0, 0, 1, 2, 1, 4])
    with pytest.raises(ValueError, match="image row 3 has no caption"):
        multi_caption_ranks(MC_IMAGES, MC_CAPTIONS, [0, 0, 1, 2, 1, 2])
    with pytest.raises(ValueError, match="dimensions differ"):
        multi_caption_ranks(MC_IMAGES, torch.zeros(6, 3), MC_OWNER)
    with pytest.raises(ValueError, match="batch_size"):
        multi_caption_ranks(MC_IMAGES, MC_CAPTIONS, MC_OWNER, batch_size=0)
