"""xsae.metrics.synthetic: the five metrics of the heterogeneity paper's Appendix D.3 (Eqs. 53–57)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xsae.metrics.synthetic import (
    code_cosines,
    collapsed_concepts,
    encode_stream,
    feature_alignment_error,
    feature_collapse_rate,
    feature_recovery_error,
    feature_recovery_errors,
    latent_alignment_error,
    nearest_latents,
    reconstruct_stream,
    reconstruction_error,
    reconstruction_errors,
    sae_from_weights,
    synthetic_metrics,
)
from xsae.sae import Codes, SAEConfig, SparseAutoencoder
from xsae.synthetic import SyntheticConfig, generate

SMALL = dict(d=64, n_shared=128, n_image=64, n_text=64, n_train=10, n_eval=400)
IDENTITY = torch.eye(2, dtype=torch.float64)


@pytest.fixture(scope="module")
def data():
    return generate(SyntheticConfig(**SMALL, alignment=0.5, seed=4))


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(array, dtype=torch.float64)


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A random permutation with no fixed point."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        if not np.any(order == np.arange(n)):
            return order


# ---- hand-computed values on tiny examples ------------------------------------------------------
def test_reconstruction_error_by_hand():
    # Decoder = identity, k = 1: x = (3, 1) keeps (3, 0), error 1; y = (0, 2) is kept exactly.
    sae = sae_from_weights(IDENTITY, k=1)
    errors = reconstruction_errors(sae, sae, [[3.0, 1.0]], [[0.0, 2.0]])
    assert errors == {"image": 1.0, "text": 0.0, "mean": 0.5}
    assert reconstruction_error(sae, sae, [[3.0, 1.0]], [[0.0, 2.0]]) == 0.5


def test_real_forward_pass_subtracts_the_pre_bias():
    # b_pre = (1, 1): x − b_pre = (2, 0) → code 2 on latent 0 → x̃ = (2, 0) + (1, 1) = x exactly.
    # Skipping the subtraction (the authors' shortcut) would give code 3 and x̃ = (4, 1): error 1.
    sae = sae_from_weights(IDENTITY, pre_bias=torch.tensor([1.0, 1.0], dtype=torch.float64), k=1)
    assert reconstruction_error(sae, sae, [[3.0, 1.0]], [[3.0, 1.0]]) == 0.0
    assert feature_recovery_error(sae, sae, [[3.0, 1.0]], [[3.0, 1.0]]) == 0.0


def test_feature_recovery_error_by_hand():
    # φ = e1 is recovered exactly; ψ = (0.6, 0.8) keeps only 0.8 e2 (k = 1): error 0.36; mean 0.18.
    sae = sae_from_weights(IDENTITY, k=1)
    phi, psi = [[1.0, 0.0]], [[0.6, 0.8]]
    assert feature_recovery_error(sae, sae, phi, psi) == pytest.approx(0.18, abs=1e-15)
    assert feature_recovery_errors(sae, sae, phi, psi)["text"] == pytest.approx(0.36, abs=1e-15)


def test_alignment_errors_by_hand():
    relu = sae_from_weights(IDENTITY)  # k = L: plain ReLU codes
    # z̃(φ) = (1, 0), z̃(ψ) = (0.6, 0.8): cos 0.6 → error 0.4.
    assert feature_alignment_error(relu, relu, [[1.0, 0.0]], [[0.6, 0.8]]) == pytest.approx(0.4, abs=1e-15)
    # z̃(x) = (3, 1), z̃(y) = (1, 3): cos 6/10; with k = 1 the codes are (3, 0) and (0, 3): cos 0.
    assert latent_alignment_error(relu, relu, [[3.0, 1.0]], [[1.0, 3.0]]) == pytest.approx(0.4, abs=1e-15)
    top1 = sae_from_weights(IDENTITY, k=1)
    assert latent_alignment_error(top1, top1, [[3.0, 1.0]], [[1.0, 3.0]]) == 1.0
    # Mean over pairs: cos 1 for the first pair, 0 for the second → 1 − 1/2.
    x, y = [[3.0, 1.0], [3.0, 1.0]], [[2.0, 0.5], [1.0, 3.0]]
    assert latent_alignment_error(top1, top1, x, y) == 0.5
    # An all-zero code (ReLU of negative logits) has no direction: it counts as cosine 0.
    assert latent_alignment_error(relu, relu, [[-1.0, -2.0]], [[1.0, 3.0]]) == 1.0


def test_collapse_by_hand():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1 / math.sqrt(2), 1 / math.sqrt(2)]], dtype=torch.float64)
    sae = sae_from_weights(rows, k=1)
    # Concept 0: φ → row 0, ψ → row 1 (split). Concept 1: both nearest to row 2 (collapsed):
    # cos(row 0, (0.7, 0.6)) = 0.759, cos(row 2, ·) = 0.997.
    phi, psi = [[0.9, 0.1], [0.7, 0.6]], [[0.1, 0.9], [0.6, 0.7]]
    assert collapsed_concepts(sae, sae, phi, psi).tolist() == [False, True]
    assert feature_collapse_rate(sae, sae, phi, psi) == 0.5
    # Cosine, not dot product: a long row 0 does not win against a better-aimed short row 2.
    scaled = sae_from_weights(rows * torch.tensor([[10.0], [1.0], [0.1]], dtype=torch.float64), k=1)
    assert nearest_latents(scaled[0].dec_weight[0], torch.tensor(psi)).tolist() == [1, 2]


def test_code_cosines_both_paths_agree_with_dense_reference():
    generator = torch.Generator().manual_seed(0)
    width = 50
    scores_a = torch.randn(64, width, generator=generator)
    scores_b = torch.randn(64, width, generator=generator)
    for k in (3, 20):  # 9 ≤ width: pairwise matching; 400 > width: dense scatter
        top_a, top_b = scores_a.relu().topk(k, dim=1), scores_b.relu().topk(k, dim=1)
        a, b = Codes(top_a.values, top_a.indices), Codes(top_b.values, top_b.indices)
        expected = F.cosine_similarity(a.dense(width).double(), b.dense(width).double(), dim=1, eps=1e-300)
        torch.testing.assert_close(code_cosines(a, b, width), expected, atol=1e-12, rtol=0)
    # Padding slots (value 0 on index 0, as BatchTopK pads) must not overwrite a real index-0 entry.
    padded = Codes(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0, 0, 0]]))
    real = Codes(torch.tensor([[1.0, 1.0]]), torch.tensor([[0, 1]]))
    for width in (2, 100):
        assert code_cosines(padded, real, width).item() == pytest.approx(1 / math.sqrt(2))


# ---- known answers on models built from the ground truth ---------------------------------------
def test_dictionary_sae_recovers_every_feature(data):
    dictionaries = data.dictionaries
    image = sae_from_weights(as_tensor(dictionaries.image), k=1)
    text = sae_from_weights(as_tensor(dictionaries.text), k=1)
    phi, psi = dictionaries.phi_shared, dictionaries.psi_shared
    assert feature_recovery_error(image, text, phi, psi) < 1e-12
    # Shared concept i sits on latent i in both: perfectly aligned, but two different directions.
    assert feature_alignment_error(image, text, phi, psi) < 1e-12
    assert feature_collapse_rate(image, text, phi, psi) == 0.0
    assert feature_collapse_rate(image, text, phi, psi, direction_tolerance=None) == 1.0


def test_permuted_text_sae_and_its_unpermutation(data):
    dictionaries = data.dictionaries
    n_shared = len(dictionaries.phi_shared)
    phi, psi = dictionaries.phi_shared, dictionaries.psi_shared
    order = derangement(n_shared, seed=1)  # text latent j holds ψ_order[j]
    image = sae_from_weights(as_tensor(phi), k=1)
    text = sae_from_weights(as_tensor(psi[order]), k=1)
    # xsae.alignment's convention: permutation[i] is the text latent paired with image latent i.
    permutation = np.argsort(order)
    # One concept per pair, so k = 1 codes are exactly one latent each.
    strength = np.random.default_rng(2).exponential(size=(n_shared, 1)) + 0.1
    x, y = strength * phi, strength * psi
    assert latent_alignment_error(image, text, x, y) == 1.0
    assert feature_alignment_error(image, text, phi, psi) == 1.0
    assert latent_alignment_error(image, text, x, y, text_permutation=permutation) < 1e-12
    assert feature_alignment_error(image, text, phi, psi, text_permutation=permutation) < 1e-12
    # A matching object (as xsae.alignment returns) is read through its `permutation` attribute.
    matching = SimpleNamespace(permutation=torch.as_tensor(permutation))
    assert feature_alignment_error(image, text, phi, psi, text_permutation=matching) < 1e-12


def test_unpermuting_restores_the_unpermuted_value_on_real_data(data):
    dictionaries, evaluation = data.dictionaries, data.eval
    phi, psi = dictionaries.phi_shared, dictionaries.psi_shared
    image = sae_from_weights(as_tensor(dictionaries.image), k=8)
    plain_text = as_tensor(dictionaries.text)
    order = derangement(len(plain_text), seed=3)
    text = sae_from_weights(plain_text, k=8)
    permuted = sae_from_weights(plain_text[order], k=8)
    permutation = np.argsort(order)
    baseline = latent_alignment_error(image, text, evaluation.image, evaluation.text)
    assert 0.05 < baseline < 0.95
    assert latent_alignment_error(image, permuted, evaluation.image, evaluation.text) > 0.95
    aligned = latent_alignment_error(image, permuted, evaluation.image, evaluation.text,
                                     text_permutation=permutation)
    assert aligned == pytest.approx(baseline, abs=1e-12)
    assert feature_alignment_error(image, permuted, phi, psi, text_permutation=permutation) == pytest.approx(
        feature_alignment_error(image, text, phi, psi), abs=1e-12)
    # Reconstruction does not depend on the latent order.
    assert reconstruction_error(image, permuted, evaluation.image, evaluation.text) == pytest.approx(
        reconstruction_error(image, text, evaluation.image, evaluation.text), abs=1e-12)


@pytest.mark.parametrize("alignment", [0.0, 0.5, 0.9])
def test_shared_sae_with_one_latent_per_concept_collapses(alignment):
    data = generate(SyntheticConfig(**SMALL, alignment=alignment, seed=6))
    dictionaries = data.dictionaries
    phi, psi = dictionaries.phi_shared, dictionaries.psi_shared
    merged = (phi + psi) / np.linalg.norm(phi + psi, axis=1, keepdims=True)
    rows = np.concatenate([merged, dictionaries.phi_image, dictionaries.psi_text])
    shared = sae_from_weights(as_tensor(rows), k=1)
    assert feature_collapse_rate(shared, shared, phi, psi) == 1.0
    assert feature_alignment_error(shared, shared, phi, psi) < 1e-12
    # Its one column per concept cannot reconstruct either direction: ‖φ − (φ·w) w‖² = (1 − α)/2.
    assert feature_recovery_error(shared, shared, phi, psi) == pytest.approx((1 - alignment) / 2, abs=1e-12)
    # A shared SAE with a column for each direction does not collapse (α < 1).
    separate = sae_from_weights(as_tensor(np.concatenate([phi, psi])), k=1)
    assert feature_collapse_rate(separate, separate, phi, psi) == 0.0
    assert feature_recovery_error(separate, separate, phi, psi) < 1e-12


@pytest.mark.parametrize("layout", ["copied", "shared_weights"])
def test_two_streams_with_one_set_of_weights(data, layout):
    """Two streams holding the same weights give the values of one single-stream SAE used for both:
    copies in two parameter sets, or the model's own shared-weights layout."""
    if layout == "shared_weights" and "shared_weights" not in SAEConfig.__dataclass_fields__:
        pytest.skip("this SparseAutoencoder has no shared_weights option")
    dictionaries = data.dictionaries
    phi, psi = dictionaries.phi_shared, dictionaries.psi_shared
    merged = (phi + psi) / np.linalg.norm(phi + psi, axis=1, keepdims=True)
    single = sae_from_weights(torch.as_tensor(merged, dtype=torch.float32), k=4)
    options = {"shared_weights": True} if layout == "shared_weights" else {}
    model = SparseAutoencoder(SAEConfig(input_dims=(64, 64), n_latents=len(merged), k=4, topk="local",
                                        **options))
    with torch.no_grad():
        for stream in range(2):
            model.dec_weight[stream].copy_(torch.as_tensor(merged))
            model.enc_weight[stream].copy_(torch.as_tensor(merged))
    evaluation = data.eval
    ours = synthetic_metrics((model, 0), (model, 1), evaluation.image, evaluation.text, phi, psi)
    reference = synthetic_metrics(single, single, evaluation.image, evaluation.text, phi, psi)
    assert ours == pytest.approx(reference, abs=1e-9)
    assert ours["feature_collapse_rate"] == 1.0


# ---- the vectorised code against a per-sample reference ----------------------------------------
def random_model(topk: str, activation: str = "topk") -> SparseAutoencoder:
    generator = torch.Generator().manual_seed(11)
    model = SparseAutoencoder(SAEConfig(input_dims=(64, 64), n_latents=96, k=5, topk=topk,
                                        activation=activation), generator=generator)
    with torch.no_grad():
        for stream in range(2):
            model.pre_bias[stream].copy_(0.05 * torch.randn(64, generator=generator))
            model.lat_bias[stream].copy_(0.05 * torch.randn(96, generator=generator))
            model.enc_weight[stream].add_(0.3 * torch.randn(96, 64, generator=generator))
    return model.eval()


@pytest.mark.parametrize("topk", ["global", "local"])
def test_metrics_match_a_per_sample_reference(data, topk):
    model = random_model(topk)
    evaluation, dictionaries = data.eval, data.dictionaries
    x, y = torch.as_tensor(evaluation.image), torch.as_tensor(evaluation.text)
    phi = torch.as_tensor(dictionaries.phi_shared, dtype=torch.float32)
    psi = torch.as_tensor(dictionaries.psi_shared, dtype=torch.float32)
    permutation = torch.as_tensor(derangement(96, seed=5))  # text latent permutation[i] ↔ image latent i
    text_to_image = torch.argsort(permutation)

    def reference(a, b, mapping=None):
        """Per row: each modality encoded alone (Local TopK), dense codes, torch's cosine."""
        reconstruction, cosines = [], []
        for row in range(len(a)):
            with torch.no_grad():
                codes = model.encode([a[row:row + 1], b[row:row + 1]], topk="local")
                recon = [model.decode(s, codes[s]) for s in range(2)]
            dense_a, dense_b = codes[0].dense(96).double(), codes[1].dense(96).double()
            if mapping is not None:
                dense_b = torch.zeros_like(dense_b).index_copy_(1, mapping, dense_b)
            reconstruction.append(float(((a[row] - recon[0]).double().pow(2).sum()
                                         + (b[row] - recon[1]).double().pow(2).sum()) / 2))
            cosines.append(float(F.cosine_similarity(dense_a, dense_b, eps=1e-300)))
        return float(np.mean(reconstruction)), 1 - float(np.mean(cosines))

    recon_xy, alignment_xy = reference(x, y, text_to_image)
    recon_atoms, alignment_atoms = reference(phi, psi)
    image, text = (model, 0), (model, 1)
    assert reconstruction_error(image, text, x, y, batch_size=37) == pytest.approx(recon_xy, rel=1e-5)
    aligned = latent_alignment_error(image, text, x, y, text_permutation=permutation, batch_size=37)
    assert aligned == pytest.approx(alignment_xy, abs=1e-6)
    assert feature_recovery_error(image, text, phi, psi) == pytest.approx(recon_atoms, rel=1e-5)
    assert feature_alignment_error(image, text, phi, psi) == pytest.approx(alignment_atoms, abs=1e-6)
    # Per-stream encoding is the model's own Local TopK.
    codes = encode_stream((model, 1), y[:50])
    expected = model.encode([x[:50], y[:50]], topk="local")[1]
    torch.testing.assert_close(codes.dense(96), expected.dense(96))
    torch.testing.assert_close(reconstruct_stream((model, 1), y[:50]), model.decode(1, expected).detach())
    # Collapse against a direct loop over concepts.
    image_rows = F.normalize(model.dec_weight[0].detach().double(), dim=1)
    text_rows = F.normalize(model.dec_weight[1].detach().double(), dim=1)
    loop = [int((image_rows @ phi[i].double()).argmax())
            == int(text_to_image[(text_rows @ psi[i].double()).argmax()]) for i in range(len(phi))]
    assert feature_collapse_rate(image, text, phi, psi, text_permutation=permutation,
                                 direction_tolerance=None) == pytest.approx(np.mean(loop))
    same = [int((image_rows @ phi[i].double()).argmax()) == int((image_rows @ psi[i].double()).argmax())
            for i in range(len(phi))]
    assert np.mean(same) > 0
    assert feature_collapse_rate(image, image, phi, psi) == pytest.approx(np.mean(same))


def test_batchtopk_uses_the_threshold_and_leaves_the_model_unchanged(data):
    model = random_model("local", activation="batchtopk")
    with torch.no_grad():
        model.batch_threshold.copy_(torch.tensor([0.05, 0.08]))
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.as_tensor(data.eval.text[:100])
    codes = encode_stream((model, 1), x)
    model.eval()
    logits = model.logits(1, x).detach()
    expected = torch.where(logits > 0.08, logits, torch.zeros_like(logits))
    torch.testing.assert_close(codes.dense(96), expected)
    model.train()
    latent_alignment_error((model, 0), (model, 1), data.eval.image, data.eval.text)
    assert model.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_bad_inputs_name_the_argument(data):
    sae = sae_from_weights(IDENTITY, k=1)
    with pytest.raises(ValueError, match=r"x: expected \[N, 2\]"):
        reconstruction_error(sae, sae, [[1.0, 2.0, 3.0]], [[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"psi: expected \[N, 2\]"):
        feature_recovery_error(sae, sae, [[1.0, 0.0]], [[1.0]])
    with pytest.raises(ValueError, match="paired row by row"):
        latent_alignment_error(sae, sae, [[1.0, 2.0]], [[1.0, 2.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"text_permutation: must be an integer permutation of range\(2\)"):
        latent_alignment_error(sae, sae, [[1.0, 2.0]], [[1.0, 2.0]], text_permutation=[0, 0])
    with pytest.raises(ValueError, match=r"text_permutation: must be an integer permutation"):
        feature_alignment_error(sae, sae, [[1.0, 2.0]], [[1.0, 2.0]], text_permutation=[0.0, 1.0])
    wider = sae_from_weights(torch.eye(3, 2, dtype=torch.float64), k=1)
    with pytest.raises(ValueError, match="have 2 and 3 latents"):
        feature_collapse_rate(sae, wider, [[1.0, 0.0]], [[1.0, 0.0]], text_permutation=[0, 1, 2])
    two_streams = random_model("global")
    with pytest.raises(ValueError, match="needs a stream index"):
        reconstruction_error(two_streams, two_streams, [[0.0] * 64], [[0.0] * 64])
    with pytest.raises(ValueError, match="image: stream 2 out of range"):
        reconstruction_error((two_streams, 2), (two_streams, 1), [[0.0] * 64], [[0.0] * 64])
    with pytest.raises(ValueError, match=r"k: must be in \[1, L=2\]"):
        sae_from_weights(IDENTITY, k=3)
