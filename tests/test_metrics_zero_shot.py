"""xsae.metrics.zero_shot: prompts, prompt ensembling, latent-space zero-shot accuracy, frequent latents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xsae.metrics.zero_shot import (
    class_embeddings,
    class_prompts,
    firing_rates,
    imagenet_class_names,
    keep_latents,
    prompt_templates,
    zero_shot_accuracy,
    zero_shot_correct,
    zero_shot_predictions,
    zero_shot_table,
)
from xsae.sae import Codes, SAEConfig, SparseAutoencoder


def test_template_sets_and_prompt_order():
    openai = prompt_templates("openai_imagenet")
    assert len(openai) == 80
    assert len(imagenet_class_names()) == 1000
    assert prompt_templates("photo") == ["a photo of a {}."]
    prompts = class_prompts(["dog", "cat"], "openai_imagenet")
    assert len(prompts) == 160
    assert prompts[0] == "a bad photo of a dog." and prompts[80] == "a bad photo of a cat."
    assert all("dog" in p for p in prompts[:80]) and all("cat" in p for p in prompts[80:])
    assert class_prompts(["dog", "cat"], "photo") == ["a photo of a dog.", "a photo of a cat."]
    assert class_prompts(["x"], ["{} one", lambda n: f"two {n}"]) == ["x one", "two x"]
    with pytest.raises(ValueError, match="template_set"):
        prompt_templates("imagenet")
    with pytest.raises(ValueError, match=r"no '\{\}'"):
        class_prompts(["x"], ["no slot"])


def test_class_embeddings_by_hand():
    # class 0: templates [2, 0] and [0, 3] -> unit [1, 0], [0, 1] -> mean [.5, .5] -> [1, 1]/√2
    # class 1: [0, -1] and [0, -5] -> [0, -1]
    prompts = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, -1.0], [0.0, -5.0]])
    expected = torch.tensor([[2 ** -0.5, 2 ** -0.5], [0.0, -1.0]])
    assert torch.allclose(class_embeddings(prompts, 2), expected)
    assert torch.allclose(class_embeddings(prompts.reshape(2, 2, 2), 2), expected)
    assert class_embeddings(prompts, 2).dtype == torch.float32
    with pytest.raises(ValueError, match="n_classes=3"):
        class_embeddings(prompts, 3)
    with pytest.raises(ValueError, match="all-zero"):
        class_embeddings(torch.zeros(2, 2), 1)
    with pytest.raises(ValueError, match="cancel"):
        class_embeddings(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), 1)


def numpy_zero_shot(images: np.ndarray, classes: np.ndarray, labels: np.ndarray,
                    keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Direct dense implementation: (argmax predictions, strictly-correct mask)."""
    if keep is not None:
        images, classes = images * keep, classes * keep

    def unit(x):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)

    scores = unit(images) @ unit(classes).T
    target = scores[np.arange(len(labels)), labels]
    others = np.where(np.arange(classes.shape[0])[None] == labels[:, None], -np.inf, scores).max(axis=1)
    return scores.argmax(axis=1), target > others


def random_codes(g: torch.Generator, n: int, n_latents: int, k: int) -> Codes:
    indices = torch.stack([torch.randperm(n_latents, generator=g)[:k] for _ in range(n)])
    return Codes(torch.rand(n, k, generator=g, dtype=torch.float64), indices)


def test_known_answer_one_latent_per_class():
    # class c is latent c; each image fires its class latent strongly and two distractors weakly
    n_classes, L = 5, 12
    class_codes = Codes(torch.ones(n_classes, 1), torch.arange(n_classes).unsqueeze(1))
    labels = torch.tensor([0, 1, 2, 3, 4, 2, 2, 0])
    distractors = torch.tensor([[7, 8], [9, 10], [0, 11], [5, 6], [1, 2], [3, 4], [5, 7], [6, 8]])
    indices = torch.cat([labels.unsqueeze(1), distractors], dim=1)
    values = torch.tensor([[1.0, 0.3, 0.2]] * 8)
    images = Codes(values, indices)
    assert zero_shot_predictions(images, class_codes, L).tolist() == labels.tolist()
    assert zero_shot_accuracy(images, class_codes, labels, L) == 1.0
    shifted = labels.roll(1)  # [0, 0, 1, 2, 3, 4, 2, 2]: agrees with the truth at rows 0 and 6
    assert zero_shot_accuracy(images, class_codes, shifted, L) == 2 / 8


def test_ties_and_all_zero_images_count_as_wrong():
    class_codes = Codes(torch.ones(3, 1), torch.tensor([[0], [1], [2]]))
    images = Codes(torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]]), torch.tensor([[0, 1], [0, 1], [2, 1]]))
    labels = [0, 0, 2]  # zero image; image tied between classes 0 and 1; a clean hit
    assert zero_shot_predictions(images, class_codes, 4).tolist() == [0, 0, 2]  # argmax picks class 0
    assert zero_shot_correct(images, class_codes, labels, 4).tolist() == [False, False, True]
    assert zero_shot_accuracy(images, class_codes, labels, 4) == pytest.approx(1 / 3)


@pytest.mark.parametrize("batch_size", [1, 7, 4096])
def test_equals_numpy_on_random_codes(batch_size):
    g = torch.Generator().manual_seed(0)
    n_images, n_classes, L = 200, 13, 40
    images = random_codes(g, n_images, L, 4)
    class_codes = random_codes(g, n_classes, L, 6)
    labels = torch.randint(0, n_classes, (n_images,), generator=g)
    keep = torch.rand(L, generator=g) > 0.3
    for mask in (None, keep):
        expected_pred, expected_correct = numpy_zero_shot(
            images.dense(L).numpy(), class_codes.dense(L).numpy(), labels.numpy(),
            None if mask is None else mask.numpy())
        pred = zero_shot_predictions(images, class_codes, L, keep=mask, batch_size=batch_size)
        assert pred.tolist() == expected_pred.tolist()
        accuracy = zero_shot_accuracy(images, class_codes, labels, L, keep=mask, batch_size=batch_size)
        assert accuracy == pytest.approx(expected_correct.mean(), abs=0)
        # dense codes and sparse codes agree exactly
        dense = zero_shot_accuracy(images.dense(L), class_codes.dense(L), labels, L, keep=mask,
                                   batch_size=batch_size)
        assert dense == accuracy
    assert 0.0 < zero_shot_accuracy(images, class_codes, labels, L) < 1.0


def test_raw_embedding_baseline():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(100, 8, generator=g)
    classes = torch.randn(6, 8, generator=g)
    labels = torch.randint(0, 6, (100,), generator=g)
    _, expected = numpy_zero_shot(images.double().numpy(), classes.double().numpy(), labels.numpy())
    assert zero_shot_accuracy(images, classes, labels, 8) == pytest.approx(expected.mean(), abs=0)


def test_frequent_latents_are_chosen_on_training_codes():
    # latent 9: fires on every TEST image and on class 0 (would pull every image to class 0) but is rare
    # in training, so it is kept; latent 8: fires on most TRAINING images, so it is dropped
    L = 10
    class_codes = Codes(torch.tensor([[1.0, 3.0], [1.0, 0.0], [1.0, 0.0]]),
                        torch.tensor([[0, 9], [1, 9], [2, 9]]))
    labels = torch.tensor([0, 1, 2, 1])
    test_images = Codes(torch.tensor([[1.0, 3.0]] * 4), torch.stack([labels, torch.full((4,), 9)], dim=1))
    train = Codes(torch.tensor([[1.0, 1.0]] * 4), torch.tensor([[8, 0], [8, 1], [8, 2], [3, 4]]))
    rates = firing_rates(train, L)
    assert rates.tolist() == [0.25, 0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0.75, 0]
    keep = keep_latents(rates)
    assert keep.tolist() == [True] * 8 + [False, True]
    assert firing_rates(test_images, L)[9] == 1.0  # the test-set rule would drop it; we do not
    # cos with class 0 (value 3 at latent 9) beats the true class for every image of class 1 and 2
    assert zero_shot_predictions(test_images, class_codes, L, keep=keep).tolist() == [0, 0, 0, 0]
    assert zero_shot_accuracy(test_images, class_codes, labels, L, keep=keep) == 0.25
    drop_nine = torch.arange(L) != 9
    assert zero_shot_accuracy(test_images, class_codes, labels, L, keep=drop_nine) == 1.0
    assert torch.equal(firing_rates(train.dense(L), L), rates)
    assert keep_latents(np.array([0.5, 0.51]), 0.5).tolist() == [True, False]
    with pytest.raises(ValueError, match="max_firing_rate"):
        keep_latents(rates, 1.5)
    with pytest.raises(ValueError, match="fractions"):
        keep_latents(torch.tensor([2.0]))


def test_table_with_real_saes():
    g = torch.Generator().manual_seed(3)
    d, L, n_classes, n_templates = 16, 64, 4, 3
    text_sae = SparseAutoencoder(SAEConfig(input_dims=(d,), n_latents=L, k=8), generator=g)
    image_sae = SparseAutoencoder(SAEConfig(input_dims=(d,), n_latents=L, k=8), generator=g)
    prompts = torch.randn(n_classes * n_templates, d, generator=g)
    images = torch.randn(30, d, generator=g)
    labels = torch.randint(0, n_classes, (30,), generator=g)

    def encode_text(x):
        return text_sae.encode([x])[0]

    with torch.no_grad():
        image_codes = image_sae.encode([images])[0]
        train_rates = firing_rates(image_sae.encode([torch.randn(50, d, generator=g)])[0], L)
        table = zero_shot_table(image_codes, prompts, labels, encode_text, L, n_classes=n_classes,
                                train_firing_rates=train_rates, max_firing_rate=0.2)
        class_codes = encode_text(class_embeddings(prompts, n_classes))
    assert table["variant"].tolist() == ["all_latents", "drop_frequent"]
    keep = keep_latents(train_rates, 0.2)
    assert table["n_kept_latents"].tolist() == [L, int(keep.sum())]
    assert table["accuracy"].tolist() == [zero_shot_accuracy(image_codes, class_codes, labels, L),
                                          zero_shot_accuracy(image_codes, class_codes, labels, L, keep=keep)]
    _, expected = numpy_zero_shot(image_codes.dense(L).double().numpy(),
                                  class_codes.dense(L).double().numpy(), labels.numpy())
    assert table["accuracy"][0] == pytest.approx(expected.mean(), abs=0)
    only_all = zero_shot_table(image_codes, prompts, labels, encode_text, L, n_classes=n_classes)
    assert only_all["variant"].tolist() == ["all_latents"]


def test_input_checks():
    class_codes = Codes(torch.ones(2, 1), torch.tensor([[0], [1]]))
    images = Codes(torch.ones(3, 1), torch.tensor([[0], [1], [0]]))
    with pytest.raises(ValueError, match="labels"):
        zero_shot_accuracy(images, class_codes, [0, 1], 4)
    with pytest.raises(ValueError, match="labels must lie"):
        zero_shot_accuracy(images, class_codes, [0, 1, 2], 4)
    with pytest.raises(ValueError, match="n_latents=1"):
        zero_shot_accuracy(images, class_codes, [0, 1, 0], 1)
    with pytest.raises(ValueError, match="keep"):
        zero_shot_accuracy(images, class_codes, [0, 1, 0], 4, keep=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch_size"):
        zero_shot_accuracy(images, class_codes, [0, 1, 0], 4, batch_size=0)
    with pytest.raises(ValueError, match="image codes"):
        zero_shot_accuracy(torch.ones(3, 5), class_codes, [0, 1, 0], 4)
