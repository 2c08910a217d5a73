"""xsae.metrics.cross_reconstruction: the R²_{s→t} matrix of SPARC Table 3 and its self/cross means."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xsae.metrics.cross_reconstruction import r2_matrix, self_cross_means
from xsae.metrics.reconstruction import r2_score
from xsae.sae import SAEConfig, SparseAutoencoder

X0 = torch.tensor([[1.0, 2.0], [3.0, 1.0], [2.0, 4.0], [4.0, 3.0]])  # mean (2.5, 2.5)
SWAP = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
B1 = torch.tensor([-1.0, 0.5])
X1 = X0 @ SWAP + B1


def designed_model() -> SparseAutoencoder:
    """Stream 0's codes are x0 itself; stream 1's codes are all zero (L = k = 2).

    D_1(z_0) = z_0 · SWAP + b_1 = x1 exactly (R²_{0→1} = 1); D_0(z_1) = b_0 = mean(x0) (R²_{1→0} = 0);
    D_0(z_0) = x0 + mean(x0): residual 4 · 12.5 = 50 over total variance 10 (R² = −4);
    D_1(z_1) = b_1: residual Σ‖x0‖² = 60 over total 10 (R² = −5).
    """
    model = SparseAutoencoder(SAEConfig(input_dims=(2, 2), n_latents=2, k=2, topk="global"))
    mean0 = X0.mean(dim=0)
    with torch.no_grad():
        model.enc_weight[0].copy_(torch.eye(2))
        model.pre_bias[0].copy_(mean0)
        model.lat_bias[0].copy_(mean0)  # h_0 = (x0 − b_0) + b_0 = x0 > 0
        model.dec_weight[0].copy_(torch.eye(2))
        model.enc_weight[1].zero_()
        model.lat_bias[1].zero_()
        model.dec_weight[1].copy_(SWAP)
        model.pre_bias[1].copy_(B1)
    return model


@pytest.mark.parametrize("topk", [None, "local"])
@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_designed_model_known_matrix(topk, batch_size):
    matrix = r2_matrix(designed_model(), [X0, X1], topk=topk, batch_size=batch_size)
    assert matrix.dtype == torch.float64 and matrix.shape == (2, 2)
    # rows = targets, columns = sources
    torch.testing.assert_close(matrix, torch.tensor([[-4.0, 0.0], [1.0, -5.0]], dtype=torch.float64),
                               rtol=0, atol=1e-12)


def random_setup(seed: int = 0, n: int = 23, dtype: torch.dtype = torch.float64):
    """A random 3-stream model; float64 by default so that batching changes no rounding."""
    g = torch.Generator().manual_seed(seed)
    model = SparseAutoencoder(SAEConfig(input_dims=(5, 3, 4), n_latents=8, k=2), generator=g).to(dtype)
    inputs = [(torch.randn(n, d, generator=g) + 0.5).to(dtype) for d in (5, 3, 4)]
    return model, inputs


@pytest.mark.parametrize("topk", [None, "global", "local"])
def test_entries_match_r2_score(topk):
    model, inputs = random_setup()
    matrix = r2_matrix(model, inputs, topk=topk, batch_size=5)
    with torch.no_grad():
        codes = model.encode(inputs, topk)
        for target in range(3):
            for source in range(3):
                expected = r2_score(model.decode(target, codes[source]), inputs[target])
                assert matrix[target, source].item() == pytest.approx(expected, abs=1e-9)


def test_batching_and_input_types_do_not_change_results():
    model, inputs = random_setup(1, n=31)
    full = r2_matrix(model, inputs, batch_size=1000)
    torch.testing.assert_close(r2_matrix(model, inputs, batch_size=3), full, rtol=0, atol=1e-10)
    torch.testing.assert_close(r2_matrix(model, [x.numpy() for x in inputs], batch_size=7), full,
                               rtol=0, atol=1e-10)
    # local differs from global for this model: the override reaches the encoder
    assert not torch.allclose(r2_matrix(model, inputs, topk="local"), full)


def test_float32_model_and_inputs():
    model64, inputs64 = random_setup(2, n=31)
    model32, inputs32 = random_setup(2, n=31, dtype=torch.float32)
    expected = r2_matrix(model64, inputs64)
    # float32 forward passes differ from float64 (and between batch sizes) only by rounding
    torch.testing.assert_close(r2_matrix(model32, inputs32, batch_size=4), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(r2_matrix(model32, inputs64), expected, rtol=0, atol=1e-5)


def test_input_checks():
    model, inputs = random_setup()
    with pytest.raises(ValueError):
        r2_matrix(model, inputs[:2])
    with pytest.raises(ValueError):
        r2_matrix(model, [inputs[0], inputs[1][:5], inputs[2]])


def test_self_cross_means_reproduce_table3():
    global_topk = [[0.663, 0.513, 0.556], [0.526, 0.725, 0.519], [0.559, 0.407, 0.690]]
    local_topk = [[0.732, 0.234, 0.456], [0.340, 0.874, 0.304], [-0.391, -4.485, 0.069]]
    self_mean, cross_mean = self_cross_means(torch.tensor(global_topk))
    assert (round(self_mean, 3), round(cross_mean, 3)) == (0.693, 0.513)
    self_mean, cross_mean = self_cross_means(np.array(local_topk))
    assert (round(self_mean, 3), round(cross_mean, 3)) == (0.558, -0.590)
    assert self_cross_means([[1.0, 2.0], [4.0, 3.0]]) == (2.0, 3.0)


def test_self_cross_means_edge_cases():
    self_mean, cross_mean = self_cross_means([[0.5]])
    assert self_mean == 0.5 and math.isnan(cross_mean)
    with pytest.raises(ValueError):
        self_cross_means(np.ones((2, 3)))
