"""xsae.metrics.reconstruction: NMSE, R², streaming accumulator and dead latents."""

from __future__ import annotations

import pytest
import torch

from xsae.metrics.reconstruction import (
    ReconstructionAccumulator,
    nmse,
    nmse_per_sample,
    r2_score,
)


def x64(seed: int = 0, shape=(20, 5)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_nmse_known_answers():
    x = x64()
    assert torch.equal(nmse_per_sample(x, x), torch.zeros(20, dtype=torch.float64))
    torch.testing.assert_close(nmse_per_sample(torch.zeros_like(x), x), torch.ones(20, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(nmse_per_sample(x / 2, x), torch.full((20,), 0.25, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    assert nmse(x / 2, x) == pytest.approx(0.25, abs=1e-15)


def test_nmse_hand_example():
    target = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    recon = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    # row 0: mean err 0.5 / mean sq 2.5 = 0.2; row 1: mean err 5 / mean sq 5 = 1
    torch.testing.assert_close(nmse_per_sample(recon, target),
                               torch.tensor([0.2, 1.0], dtype=torch.float64), rtol=0, atol=1e-15)
    assert nmse(recon, target) == pytest.approx(0.6, abs=1e-15)


def test_nmse_is_per_sample_not_pooled():
    target = torch.tensor([[10.0, 10.0], [1.0, 1.0]], dtype=torch.float64)
    recon = torch.tensor([[9.0, 9.0], [0.0, 0.0]], dtype=torch.float64)
    # pooled would be (1 + 1) / (100 + 1); per sample: (0.01 + 1) / 2
    assert nmse(recon, target) == pytest.approx(0.505, abs=1e-15)


def test_r2_known_answers():
    x = x64()
    assert r2_score(x, x) == 1.0
    mean = x.mean(dim=0, keepdim=True).expand_as(x)
    assert r2_score(mean, x) == 0.0


def test_r2_hand_example():
    target = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]], dtype=torch.float64)
    recon = torch.tensor([[1.0, 1.0], [2.0, 4.0], [5.0, 1.0]], dtype=torch.float64)
    # column means (3, 2); total SS = (4+0+4) + (0+4+4) = 16; residual SS = 1 + 1 + 1 = 3
    assert r2_score(recon, target) == pytest.approx(1 - 3 / 16, abs=1e-12)
    # float32 inputs are promoted to float64
    assert r2_score(recon.float(), target.float()) == pytest.approx(1 - 3 / 16, abs=1e-12)


def test_r2_can_be_negative():
    target = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    assert r2_score(-target, target) == pytest.approx(-3.0, abs=1e-12)


def test_accumulator_matches_one_shot():
    target = x64(1, (37, 6))
    recon = target + 0.3 * x64(2, (37, 6))
    acc = ReconstructionAccumulator()
    for lo, hi in [(0, 10), (10, 11), (11, 37)]:
        acc.update(recon[lo:hi], target[lo:hi])
    result = acc.result()
    assert result["n_samples"] == 37
    assert result["nmse"] == pytest.approx(nmse(recon, target), abs=1e-10)
    assert result["r2"] == pytest.approx(r2_score(recon, target), abs=1e-10)


def test_accumulator_float32_inputs():
    target = x64(3, (12, 4))
    recon = target * 0.9
    acc = ReconstructionAccumulator()
    acc.update(recon[:5].float(), target[:5].float())
    acc.update(recon[5:].float(), target[5:].float())
    result = acc.result()
    assert result["r2"] == pytest.approx(r2_score(recon.float(), target.float()), abs=1e-10)
    assert result["nmse"] == pytest.approx(0.01, abs=1e-6)


def test_accumulator_empty_raises():
    with pytest.raises(ValueError):
        ReconstructionAccumulator().result()


