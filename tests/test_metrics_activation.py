"""xsae.metrics.activation: alive latents per stream and SPARC Table 1 activation patterns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xsae.metrics.activation import activation_patterns, alive_mask, alive_matrix, select_samples
from xsae.sae import Codes

CODES = Codes(values=torch.tensor([[1.0, 0.0], [0.5, 2.0], [0.0, 0.0]]),
              indices=torch.tensor([[0, 1], [2, 3], [4, 5]]))


def test_alive_mask_counts_only_non_zero_values():
    # latent 1 is selected with value 0, latents 4 and 5 only on the all-zero sample, 6 never
    assert alive_mask(CODES, 7).tolist() == [True, False, True, True, False, False, False]


def test_alive_mask_sample_mask():
    # only sample 1 is labelled: latents 2 and 3
    expected = [False, False, True, True, False, False, False]
    for mask in (torch.tensor([False, True, False]), np.array([0, 1, 0], dtype=bool)):
        assert alive_mask(CODES, 7, sample_mask=mask).tolist() == expected
    assert select_samples(CODES, None) is CODES
    with pytest.raises(ValueError):
        alive_mask(CODES, 7, sample_mask=torch.tensor([True, False]))


def test_alive_matrix_stacks_streams():
    other = Codes(torch.tensor([[3.0], [0.0], [1.0]]), torch.tensor([[6], [0], [1]]))
    matrix = alive_matrix([CODES, other], 7)
    assert matrix.shape == (2, 7) and matrix.dtype == torch.bool
    assert matrix[1].tolist() == [False, True, False, False, False, False, True]


# Five latents over three streams: alive in 3, 0, 1, 2, 2 streams.
ALIVE = torch.tensor([[1, 0, 1, 1, 0],
                      [1, 0, 0, 1, 1],
                      [1, 0, 0, 0, 1]], dtype=torch.bool)


def test_patterns_three_streams_by_hand():
    patterns = activation_patterns(ALIVE, stream_names=["CI", "CT", "D"])
    expected = {"all_dead": 0.2, "1/3": 0.2, "2/3": 0.4, "all_alive": 0.2,
                "dead_CI": 0.4, "dead_CT": 0.4, "dead_D": 0.6}
    assert list(patterns) == list(expected)
    for key, value in expected.items():
        assert patterns[key] == pytest.approx(value, abs=1e-15)


def test_patterns_default_names_and_numpy_input():
    patterns = activation_patterns(ALIVE.numpy())
    assert patterns["dead_stream2"] == pytest.approx(0.6)


def test_patterns_sum_to_one_and_ignore_latent_order():
    alive = torch.rand(4, 50, generator=torch.Generator().manual_seed(0)) > 0.4
    patterns = activation_patterns(alive)
    pattern_keys = ["all_dead", "1/4", "2/4", "3/4", "all_alive"]
    assert sum(patterns[k] for k in pattern_keys) == pytest.approx(1.0, abs=1e-12)
    permuted = activation_patterns(alive[:, torch.randperm(50, generator=torch.Generator().manual_seed(1))])
    assert permuted == patterns


def test_patterns_one_and_two_streams():
    one = activation_patterns(torch.tensor([[True, False, False, True]]))
    assert one == {"all_dead": 0.5, "all_alive": 0.5, "dead_stream0": 0.5}
    two = activation_patterns(torch.tensor([[True, False, True, True], [True, False, False, True]]))
    assert two == {"all_dead": 0.25, "1/2": 0.25, "all_alive": 0.5, "dead_stream0": 0.25, "dead_stream1": 0.5}


def test_identical_streams_have_no_mixed_patterns():
    row = torch.tensor([True, False, True, True])
    patterns = activation_patterns(torch.stack([row, row, row]))
    assert patterns["1/3"] == patterns["2/3"] == 0.0
    assert patterns["all_alive"] == 0.75 and patterns["all_dead"] == 0.25


def test_patterns_rejects_bad_shapes():
    with pytest.raises(ValueError):
        activation_patterns(torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError):
        activation_patterns(torch.ones(2, 3, dtype=torch.bool), stream_names=["a"])
