"""Online per-layer training (`xsae.online_training`): the buffer serves every token once, mixed
across samples and deterministically; padding never enters it; the online trainer equals training
from a tensor on the same token order; a resumed pass ends with the same weights."""

from __future__ import annotations

import pytest
import torch

from xsae.encoders.base import real_tokens
from xsae.online_training import LayerTrainer, OnlineTrainer, TokenBuffer, buffer_rows, layer_groups
from xsae.sae import SAEConfig, SparseAutoencoder
from xsae.training import TrainingConfig, dead_latent_bounds, learning_rate, make_optimizer, take_step

WIDTH, TOKENS_PER_SAMPLE = 6, 10


def samples(n: int, seed: int = 0) -> list[torch.Tensor]:
    """`n` samples of TOKENS_PER_SAMPLE tokens; column 0 holds the sample's index (to trace mixing)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        tokens = torch.randn(TOKENS_PER_SAMPLE, WIDTH, generator=g)
        tokens[:, 0] = i
        out.append(tokens)
    return out


def served(buffer: TokenBuffer, pushes: list[torch.Tensor]) -> list[torch.Tensor]:
    batches = [batch.clone() for tokens in pushes for batch in buffer.push(tokens)]
    return batches + [batch.clone() for batch in buffer.drain()]


def test_buffer_serves_every_token_once_mixed_across_samples():
    data = samples(40)
    buffer = TokenBuffer(WIDTH, capacity=100, batch_size=16, generator=torch.Generator().manual_seed(3))
    batches = served(buffer, data)
    everything = torch.cat(batches)
    assert everything.shape[0] == 400 and all(b.shape[0] == 16 for b in batches[:-1])
    # the same multiset of rows as pushed
    key = lambda x: x[torch.argsort(x[:, 1])]  # noqa: E731 - column 1 is continuous: rows are distinct
    torch.testing.assert_close(key(everything), key(torch.cat(data)), rtol=0, atol=0)
    # the first batch, served once 100 tokens (10 samples) were in, mixes many samples
    assert len(set(batches[0][:, 0].tolist())) >= 6
    again = served(TokenBuffer(WIDTH, 100, 16, torch.Generator().manual_seed(3)), data)
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_buffer_state_round_trip_serves_the_same_batches():
    data = samples(30)
    whole = served(TokenBuffer(WIDTH, 64, 8, torch.Generator().manual_seed(1)), data)
    first = TokenBuffer(WIDTH, 64, 8, torch.Generator().manual_seed(1))
    batches = [b.clone() for tokens in data[:13] for b in first.push(tokens)]
    second = TokenBuffer(WIDTH, 64, 8, torch.Generator().manual_seed(99))
    second.load_state_dict(first.state_dict())
    batches += served(second, data[13:])
    assert all(torch.equal(a, b) for a, b in zip(whole, batches, strict=True)) and len(batches) == len(whole)


def test_buffer_needs_room_for_two_batches():
    with pytest.raises(ValueError, match="capacity >= 2"):
        TokenBuffer(WIDTH, 10, 8, torch.Generator())


def test_padding_never_becomes_a_token():
    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    kept, rows = real_tokens(tokens, mask)
    torch.testing.assert_close(kept, torch.stack([tokens[0, 0], tokens[0, 1], tokens[0, 2], tokens[1, 0]]))
    assert rows.tolist() == [0, 0, 0, 1]
    everything, rows = real_tokens(tokens, None)  # a CNN feature map: every position is real
    assert everything.shape == (8, 3) and rows.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def config(**overrides) -> TrainingConfig:
    return TrainingConfig(**{"epochs": 1, "batch_size": 16, "lr": 1e-3, "auxk_k": 8, "dead_steps": 5,
                             "log_every": 3, "seed": 4, **overrides})


def fresh_model(seed: int = 0) -> SparseAutoencoder:
    return SparseAutoencoder(SAEConfig((WIDTH,), 32, 4, "local"),
                             generator=torch.Generator().manual_seed(seed))


def test_online_training_equals_training_on_the_same_token_order():
    data, cfg = samples(50), config()
    online = LayerTrainer("layer00", fresh_model(), cfg, buffer_rows=64, planned_steps=32)
    for tokens in data:
        online.feed(tokens)
    log = online.finish()

    # The same batches, in the same order, through the ordinary training step.
    order = served(TokenBuffer(WIDTH, 64, cfg.batch_size, torch.Generator().manual_seed(cfg.seed)), data)
    model = fresh_model()
    optimizer = make_optimizer(model, cfg.lr)
    bounds = dead_latent_bounds(model)
    for step, batch in enumerate(order):
        lr = learning_rate(step, 32, cfg)
        take_step(model, optimizer, [batch], cfg, step=step, lr=lr, dead_bounds=bounds)
        bounds = [b + 1 for b in bounds]
        if (step + 1) % cfg.log_every == 0:
            bounds = dead_latent_bounds(model)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(online.model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert online.step == len(order) == 32 and online.tokens_seen == 500
    assert log["tokens"].iloc[-1] == 500 and log["step"].iloc[-1] == 32


def test_a_resumed_pass_ends_with_the_same_weights():
    data = samples(60)

    def trainer() -> OnlineTrainer:
        return OnlineTrainer({name: LayerTrainer(name, fresh_model(seed), config(seed=seed), buffer_rows=48,
                                                 planned_steps=40) for seed, name in enumerate(("l0", "l1"))})

    whole = trainer()
    for tokens in data:
        whole.feed({"l0": tokens, "l1": tokens * 2}, n_samples=1)
    whole.finish()

    first = trainer()
    for tokens in data[:23]:
        first.feed({"l0": tokens, "l1": tokens * 2}, n_samples=1)
    state = first.state_dict()
    resumed = trainer()
    resumed.load_state_dict(state)
    assert resumed.samples_done == 23
    for tokens in data[resumed.samples_done:]:
        resumed.feed({"l0": tokens, "l1": tokens * 2}, n_samples=1)
    resumed.finish()
    for name in ("l0", "l1"):
        for key, value in whole.layers[name].model.state_dict().items():
            torch.testing.assert_close(resumed.layers[name].model.state_dict()[key], value, rtol=0, atol=0)


def test_buffer_sizes_and_layer_groups():
    assert buffer_rows(batch_size=256, samples_mixed=64, tokens_per_sample=257) == 16_640  # 65 batches
    assert buffer_rows(batch_size=256, samples_mixed=1, tokens_per_sample=1) == 512
    assert layer_groups([("a", 4), ("b", 4), ("c", 4)], budget_bytes=10) == [["a", "b"], ["c"]]
    assert layer_groups([("a", 4), ("b", 4)], budget_bytes=100) == [["a", "b"]]
    assert layer_groups([("big", 50), ("a", 1)], budget_bytes=10) == [["big"], ["a"]]
