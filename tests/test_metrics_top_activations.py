"""xsae.metrics.top_activations: per-latent top-activating samples, chunked and deterministic."""

from __future__ import annotations

import pytest
import torch

from xsae.metrics.top_activations import top_activating
from xsae.sae import Codes

# Five samples, four latents, k = 2.
CODES = Codes(values=torch.tensor([[1.0, 3.0], [2.0, 0.0], [2.0, 5.0], [0.5, 1.0], [4.0, 0.0]]),
              indices=torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0], [1, 3]]))


def test_known_answer_with_ties_and_padding():
    indices, values = top_activating(CODES, n_latents=4, top_n=3)
    # latent 0: samples 0 (1), 1 (2), 2 (2), 3 (1): tie 2/2 -> lower index first; tie 1/1 -> sample 0
    # latent 1: samples 0 (3), 2 (5), 3 (0.5), 4 (4); latent 2: sample 1 has value 0 -> none;
    # latent 3: selected with value 0 only -> none
    assert indices.tolist() == [[1, 2, 0], [2, 4, 0], [-1, -1, -1], [-1, -1, -1]]
    assert values.tolist() == [[2.0, 2.0, 1.0], [5.0, 4.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert indices.dtype == torch.long and values.dtype == torch.float32


def test_fewer_active_samples_than_top_n():
    indices, values = top_activating(CODES, n_latents=4, top_n=6, latents=[1])
    assert indices.tolist() == [[2, 4, 0, 3, -1, -1]]
    assert values.tolist() == [[5.0, 4.0, 3.0, 0.5, 0.0, 0.0]]


def test_latent_subset_and_order():
    indices, _ = top_activating(CODES, n_latents=4, top_n=1, latents=torch.tensor([3, 1, 0]))
    assert indices.tolist() == [[-1], [2], [1]]


def reference(codes: Codes, n_latents: int, top_n: int) -> tuple[list, list]:
    dense = codes.dense(n_latents)
    all_indices, all_values = [], []
    for latent in range(n_latents):
        column = dense[:, latent].tolist()
        order = sorted((i for i, v in enumerate(column) if v > 0), key=lambda i: (-column[i], i))[:top_n]
        pad = top_n - len(order)
        all_indices.append(order + [-1] * pad)
        all_values.append([column[i] for i in order] + [0.0] * pad)
    return all_indices, all_values


@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_matches_reference_and_batching(batch_size):
    g = torch.Generator().manual_seed(0)
    n, n_latents, k = 60, 12, 3
    indices = torch.stack([torch.randperm(n_latents, generator=g)[:k] for _ in range(n)])
    # quantised values make ties; some zeros make selected-but-inactive entries
    values = torch.randint(0, 4, (n, k), generator=g).float() / 2
    codes = Codes(values, indices)
    expected = reference(codes, n_latents, top_n=5)
    got_indices, got_values = top_activating(codes, n_latents, top_n=5, batch_size=batch_size)
    assert got_indices.tolist() == expected[0]
    assert got_values.tolist() == expected[1]
    subset = [7, 0, 11, 3]
    sub_indices, sub_values = top_activating(codes, n_latents, top_n=5, latents=subset, batch_size=batch_size)
    assert torch.equal(sub_indices, got_indices[subset]) and torch.equal(sub_values, got_values[subset])


def test_float64_and_half_inputs():
    codes64 = Codes(CODES.values.double(), CODES.indices)
    indices, values = top_activating(codes64, 4, top_n=2)
    assert values.dtype == torch.float64 and indices.tolist()[1] == [2, 4]
    codes16 = Codes(CODES.values.half(), CODES.indices)
    assert top_activating(codes16, 4, top_n=2)[1].tolist()[1] == [5.0, 4.0]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        top_activating(CODES, 4, top_n=0)
    for latents in ([1, 1], [4], [-1]):
        with pytest.raises(ValueError):
            top_activating(CODES, 4, latents=latents)



def test_the_figure_finds_coco_sample_ids_read_back_from_csv(tmp_path):
    """COCO's sample ids are zero-padded digits: read back as numbers they match no manifest row (the
    figure raised KeyError on COCO)."""
    import pandas as pd
    from PIL import Image

    from xsae import figures

    image = tmp_path / "000000262110.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image)
    manifest = pd.DataFrame({"sample_id": ["000000262110"], "image_path": [str(image)],
                             "caption": ["a red square"]})
    path = tmp_path / "top.csv"
    path.write_text("stream,latent,rank,sample_id,value\nimage,3,0,000000262110,1.5\n")
    top = figures.read_top_activations(path)
    assert top["sample_id"].tolist() == ["000000262110"]
    figure = figures.top_activations_figure(top, manifest, [3], per_stream=2)
    titles = [ax.get_title() for ax in figure.axes]
    assert any("a red square" in title and "1.500" in title for title in titles), titles
