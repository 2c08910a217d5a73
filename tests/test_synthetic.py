"""xsae.synthetic: the heterogeneity paper's generator (Appendix D.2), its guarantees measured."""

from __future__ import annotations

import json
import math
import time

import h5py
import numpy as np
import pytest

import xsae.synthetic as synthetic
from xsae.errors import ConfigError
from xsae.features import StreamRef, load_streams, read_attrs
from xsae.io import sha256_file
from xsae.synthetic import (
    InfeasibleDictionaryError,
    SyntheticConfig,
    SyntheticConfigError,
    generate,
    make_dictionaries,
    read_ground_truth,
    welch_bound,
    write_dataset,
)

#: Small enough for tests, crowded enough (3/8 of R^64's "room" at 0.30) that random directions
#: violate the bound and the repair has work to do.
SMALL = dict(d=64, n_shared=128, n_image=64, n_text=64, n_train=2000, n_eval=500)


def independent_check(dictionaries, alignment: float) -> tuple[float, float, float, float]:
    """(max |cos − α| over matched pairs, max |‖row‖ − 1|, max and min off-pair cosine) from the
    full float64 Gram of the joint dictionary, computed here without the module's scan."""
    joint = dictionaries.joint
    n_shared, n_image = len(dictionaries.phi_shared), len(dictionaries.phi_image)
    gram = joint @ joint.T
    norms_error = float(np.abs(np.sqrt(np.diag(gram)) - 1).max())
    matched = np.einsum("ij,ij->i", dictionaries.phi_shared, dictionaries.psi_shared)
    alignment_error = float(np.abs(matched - alignment).max()) if n_shared else 0.0
    excluded = np.eye(len(joint), dtype=bool)
    shared = np.arange(n_shared)
    excluded[shared, shared + n_shared + n_image] = True
    excluded[shared + n_shared + n_image, shared] = True
    off = gram[~excluded]
    return alignment_error, norms_error, float(off.max()), float(off.min())


@pytest.mark.parametrize("alignment", [0.0, 0.2, 0.5, 0.8, 1.0, -0.4])
def test_dictionary_guarantees(alignment):
    config = SyntheticConfig(**SMALL, alignment=alignment, seed=3)
    # The setting really needs repair: plain random directions break the bound.
    random_rows = np.random.default_rng(0).standard_normal((2 * 128 + 64 + 64, 64))
    random_rows /= np.linalg.norm(random_rows, axis=1, keepdims=True)
    random_gram = np.abs(random_rows @ random_rows.T - np.eye(len(random_rows)))
    assert random_gram.max() > 0.4

    dictionaries = make_dictionaries(config)
    alignment_error, norms_error, largest, smallest = independent_check(dictionaries, alignment)
    assert alignment_error <= 1e-5
    assert norms_error <= 1e-12
    assert largest <= 0.30 + 1e-6
    assert smallest >= -0.30 - 1e-6  # two-sided: negative interference is bounded too
    assert dictionaries.max_interference() == pytest.approx(max(largest, -smallest), abs=1e-12)
    assert dictionaries.image.shape == (128 + 64, 64)
    assert dictionaries.text.shape == (128 + 64, 64)


def test_paper_scale_dictionary_guarantees():
    config = SyntheticConfig(alignment=0.6)
    start = time.perf_counter()
    dictionaries = make_dictionaries(config)
    seconds = time.perf_counter() - start
    alignment_error, norms_error, largest, smallest = independent_check(dictionaries, 0.6)
    assert dictionaries.joint.shape == (3072, 256)
    assert alignment_error <= 1e-12 and norms_error <= 1e-12
    assert max(largest, -smallest) <= 0.30 + 1e-6
    assert seconds < 60  # about 0.3 s on 2 cores; a loose guard against a pathological slowdown


def test_alignment_one_makes_identical_directions_and_zero_orthogonal():
    same = make_dictionaries(SyntheticConfig(**SMALL, alignment=1.0))
    np.testing.assert_allclose(same.phi_shared, same.psi_shared, atol=1e-12)
    orthogonal = make_dictionaries(SyntheticConfig(**SMALL, alignment=0.0))
    assert np.abs(np.einsum("ij,ij->i", orthogonal.phi_shared, orthogonal.psi_shared)).max() < 1e-12


def test_welch_bound_known_values():
    assert welch_bound(10, 64) == 0.0
    # d + 1 vectors: the simplex, coherence 1/d.
    assert welch_bound(4, 3) == pytest.approx(1 / 3)
    assert welch_bound(3072, 256) == pytest.approx(math.sqrt(2816 / (256 * 3071)))


def test_impossible_settings_raise_clear_errors():
    welch = r"d=16 dimensions: the Welch bound is 0\.2404"
    with pytest.raises(InfeasibleDictionaryError, match=welch) as caught:
        make_dictionaries(SyntheticConfig(d=16, n_shared=100, n_image=50, n_text=50, max_interference=0.1))
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ValueError)
    # Allowed by Welch, but no repair in one step: the error says how far it got.
    with pytest.raises(InfeasibleDictionaryError, match=r"best 0\.\d+ after"):
        make_dictionaries(SyntheticConfig(d=16, n_shared=20, n_image=10, n_text=10, max_iterations=1))
    with pytest.raises(InfeasibleDictionaryError, match="d=1"):
        make_dictionaries(SyntheticConfig(d=1, n_shared=1, n_image=0, n_text=0, alignment=0.5))


@pytest.mark.parametrize(("key", "value", "pattern"), [
    ("sparsity", 1.0, r"synthetic\.sparsity"), ("alignment", 1.5, r"synthetic\.alignment"),
    ("n_shared", -1, r"synthetic\.n_shared"), ("d", 0, r"synthetic\.d"),
    ("magnitude_rate", 0.0, r"synthetic\.magnitude_rate"), ("noise_std", -0.1, r"synthetic\.noise_std"),
    ("max_interference", 1.2, r"synthetic\.max_interference"), ("n_train", True, r"synthetic\.n_train"),
])
def test_bad_config_values_name_the_key(key, value, pattern):
    with pytest.raises(SyntheticConfigError, match=pattern):
        SyntheticConfig(**{key: value})


def test_needs_concepts_in_each_modality():
    with pytest.raises(SyntheticConfigError, match="at least one concept"):
        SyntheticConfig(n_shared=0, n_image=0, n_text=5)


def test_support_rate_and_shared_support():
    config = SyntheticConfig(**{**SMALL, "n_train": 20_000}, seed=1)
    split = generate(config).train
    truth = split.truth
    n_shared = config.n_shared
    # Every concept's activity: image columns hold shared + image-only, text holds text-only too.
    active = truth.codes_image.nnz + truth.codes_text[:, n_shared:].nnz
    cells = config.n_train * config.n_concepts
    rate = active / cells
    sd = math.sqrt(0.01 * 0.99 / cells)
    assert abs(rate - 0.01) < 5 * sd
    # Rows are Binomial(n, p): variance n p (1 − p) (loose check of independence across concepts).
    per_row = np.diff(truth.codes_image.indptr) + np.diff(truth.codes_text[:, n_shared:].indptr)
    assert per_row.var() == pytest.approx(config.n_concepts * 0.01 * 0.99, rel=0.1)
    # Shared concepts: same support in both modalities, and (paper, Eq. 1) the same magnitudes.
    image_shared, text_shared = truth.codes_image[:, :n_shared], truth.codes_text[:, :n_shared]
    assert (image_shared != text_shared).nnz == 0
    assert truth.codes_image.data.min() > 0


def test_magnitudes_exponential_and_independent_option():
    config = SyntheticConfig(**{**SMALL, "n_train": 20_000}, magnitude_rate=2.0, shared_magnitudes=False)
    truth = generate(config).train.truth
    values = truth.codes_image.data
    assert values.mean() == pytest.approx(0.5, rel=0.03)  # Exp(rate 2): mean 1/2, sd 1/2
    assert np.median(values) == pytest.approx(math.log(2) / 2, rel=0.05)
    image_shared = truth.codes_image[:, :config.n_shared]
    text_shared = truth.codes_text[:, :config.n_shared]
    np.testing.assert_array_equal(image_shared.indptr, text_shared.indptr)
    np.testing.assert_array_equal(image_shared.indices, text_shared.indices)
    assert abs(np.corrcoef(image_shared.data, text_shared.data)[0, 1]) < 0.05


def test_embeddings_follow_the_generative_equation():
    clean = generate(SyntheticConfig(**SMALL, noise_std=0.0, normalize=False))
    truth, dictionaries = clean.train.truth, clean.dictionaries
    np.testing.assert_allclose(clean.train.image, truth.codes_image @ dictionaries.image, atol=1e-5)
    np.testing.assert_allclose(clean.train.text, truth.codes_text @ dictionaries.text, atol=1e-5)
    assert np.all(truth.image_scale == 1.0)

    noisy = generate(SyntheticConfig(**SMALL, seed=5))
    split, dictionaries = noisy.train, noisy.dictionaries
    np.testing.assert_allclose(np.linalg.norm(split.image, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(split.text, axis=1), 1.0, atol=1e-5)
    noise = split.image / split.truth.image_scale[:, None] - split.truth.codes_image @ dictionaries.image
    assert noise.std() == pytest.approx(0.05, rel=0.02)
    assert abs(noise.mean()) < 1e-3
    assert split.image.dtype == np.float32 and split.image.shape == (2000, 64)
    assert noisy.eval.image.shape == (500, 64)


def test_seeds():
    first, again = generate(SyntheticConfig(**SMALL, seed=7)), generate(SyntheticConfig(**SMALL, seed=7))
    for a, b in ((first.train.image, again.train.image), (first.eval.text, again.eval.text),
                 (first.dictionaries.joint, again.dictionaries.joint)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(make_dictionaries(SyntheticConfig(**SMALL, seed=7)).joint,
                                  first.dictionaries.joint)
    other = generate(SyntheticConfig(**SMALL, seed=8))
    assert not np.allclose(first.dictionaries.joint, other.dictionaries.joint)
    assert not np.allclose(first.train.image, other.train.image)
    # The eval split and the dictionaries do not depend on the training-set size.
    longer = generate(SyntheticConfig(**{**SMALL, "n_train": 3000}, seed=7))
    np.testing.assert_array_equal(first.eval.image, longer.eval.image)
    np.testing.assert_array_equal(first.dictionaries.joint, longer.dictionaries.joint)
    # Streams are consumed in row order, so a longer training set extends the shorter one.
    np.testing.assert_array_equal(first.train.image, longer.train.image[:2000])


def test_bernoulli_support_edge_cases():
    rng = np.random.default_rng(0)
    indptr, cols = synthetic._bernoulli_support(3, 4, 1.0, rng)
    np.testing.assert_array_equal(indptr, [0, 4, 8, 12])
    np.testing.assert_array_equal(cols, np.tile(np.arange(4), 3))
    indptr, cols = synthetic._bernoulli_support(500, 300, 0.05, rng)
    assert indptr[-1] == len(cols) and np.all(np.diff(indptr) >= 0)
    for row in range(500):
        assert np.all(np.diff(cols[indptr[row]:indptr[row + 1]]) > 0)  # sorted, no repeats


def test_write_and_read_back(tmp_path):
    dataset = generate(SyntheticConfig(**SMALL, seed=2))
    train, evaluation, truth_path = tmp_path / "train.h5", tmp_path / "eval.h5", tmp_path / "truth.npz"
    write_dataset(dataset, train, evaluation, truth_path, dataset_name="synthetic_a05")
    (image, text), ids = load_streams([StreamRef(train, "image"), StreamRef(train, "text")])
    np.testing.assert_array_equal(image, dataset.train.image)
    np.testing.assert_array_equal(text, dataset.train.text)
    assert ids[:2] == ["train-000000", "train-000001"] and len(ids) == 2000
    attrs = read_attrs(evaluation)
    assert attrs["split"] == "eval" and attrs["dataset"] == "synthetic_a05"
    assert attrs["dtype"] == "float32" and json.loads(attrs["modalities"]) == ["image", "text"]
    assert attrs["manifest_sha256"] == sha256_file(truth_path)
    assert json.loads(attrs["synthetic_config"])["seed"] == 2
    with h5py.File(evaluation) as h5:
        assert h5["pooled/image"].dtype == np.float32 and h5["pooled/text"].shape == (500, 64)

    truth = read_ground_truth(truth_path)
    assert truth.config == dataset.config
    np.testing.assert_array_equal(truth.dictionaries.joint, dataset.dictionaries.joint)
    for name in ("train", "eval"):
        stored, original = truth.splits[name], dataset.splits[name].truth
        assert (stored.codes_image != original.codes_image).nnz == 0
        assert (stored.codes_text != original.codes_text).nnz == 0
        np.testing.assert_array_equal(stored.text_scale, original.text_scale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.h5", "train.h5", "truth.npz"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    dataset = generate(SyntheticConfig(**SMALL))

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "sample_ids", broken)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(dataset, tmp_path / "train.h5", tmp_path / "eval.h5", tmp_path / "truth.npz")
    # The ground truth was complete before the feature file failed; no temporary is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truth.npz"]


def test_read_ground_truth_errors(tmp_path):
    from xsae.errors import DataError

    with pytest.raises(DataError, match="not found"):
        read_ground_truth(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        read_ground_truth(tmp_path / "bad.npz")


def test_paper_scale_generation():
    start = time.perf_counter()
    dataset = generate(SyntheticConfig(alignment=0.5, seed=1))
    seconds = time.perf_counter() - start
    assert dataset.train.image.shape == (50_000, 256) and dataset.eval.text.shape == (10_000, 256)
    assert dataset.train.truth.codes_image.shape == (50_000, 1536)
    assert dataset.dictionaries.max_interference() <= 0.30
    assert seconds < 120  # about 1.5 s on 2 cores
