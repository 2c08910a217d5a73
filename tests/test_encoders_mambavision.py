"""MambaVision (`xsae.encoders.mambavision`) on TINY RANDOMLY INITIALISED networks.

The published checkpoints are not used (no internet here); checkpoint folders are written by the
tiny-model builders of `xsae.rehearsal.encoders`. The selective scan is checked against
hand-computed values; the whole network against the authors' pip package `mambavision` (installed
without its pinned dependencies by `make setup`), whose CUDA-only scan import is replaced by a
plain recurrence written in this file; the loader through a checkpoint folder in the hub's layout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xsae.encoders import EncoderSpec, load_encoder
from xsae.encoders.mambavision import (
    attention_blocks,
    backbone_state,
    from_windows,
    load_backbone,
    selective_scan,
    to_windows,
)
from xsae.errors import ConfigError, DownloadError
from xsae.rehearsal.encoders import build_mambavision, save_mambavision

pytestmark = pytest.mark.random_weights

TINY = {"dim": 16, "in_dim": 8, "depths": [1, 2, 3, 2], "num_heads": [1, 2, 2, 4], "mlp_ratio": 4}


# ---- the scan --------------------------------------------------------------------------------


def test_selective_scan_known_answer():
    """Δ = softplus(0) = ln 2 and A = −1 halve the state each step: an impulse decays as ln2·2^−t;
    D adds D·u; a second state with B = 0 contributes nothing."""
    length = 4
    u = torch.tensor([[[1.0, 0.0, 0.0, 2.0]]])
    delta = torch.zeros(1, 1, length)
    A = torch.tensor([[-1.0, -5.0]])
    B = torch.stack([torch.ones(length), torch.zeros(length)])[None]
    C = torch.ones(1, 2, length)
    D = torch.tensor([3.0])
    y = selective_scan(u, delta, A, B, C, D, torch.zeros(1))
    ln2 = math.log(2)
    states = [ln2, ln2 / 2, ln2 / 4, ln2 / 8 + 2 * ln2]
    expected = torch.tensor(states) + 3 * u[0, 0]
    torch.testing.assert_close(y[0, 0], expected)


def test_selective_scan_bias_and_output_dtype():
    """delta_bias shifts Δ per channel; half-precision inputs come back in their dtype."""
    generator = torch.Generator().manual_seed(0)
    u, delta = torch.randn(2, 3, 5, generator=generator), torch.randn(2, 3, 5, generator=generator)
    A, D = -torch.rand(3, 4, generator=generator), torch.randn(3, generator=generator)
    B, C = torch.randn(2, 4, 5, generator=generator), torch.randn(2, 4, 5, generator=generator)
    bias = torch.randn(3, generator=generator)
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, D, bias),
                               selective_scan(u, delta + bias[:, None], A, B, C, D, torch.zeros(3)))
    half = selective_scan(u.bfloat16(), delta, A, B, C, D, bias)
    assert half.dtype == torch.bfloat16


def test_windows_round_trip_and_order():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    windows = to_windows(x, 2)
    assert windows.shape == (2 * 2 * 3, 4, 3)
    torch.testing.assert_close(windows[1, :, 0], x[0, 0, 0:2, 2:4].flatten())  # 2nd window, row-major
    torch.testing.assert_close(from_windows(windows, 2, 4, 6), x)


@pytest.mark.parametrize(("depth", "attention"),
                         [(1, []), (2, [1]), (3, [2]), (5, [3, 4]), (10, [5, 6, 7, 8, 9])])
def test_attention_blocks_are_the_second_half(depth, attention):
    assert list(attention_blocks(depth)) == attention


# ---- the network against the authors' package ---------------------------------------------------


def _recurrence(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                return_last_state=False):
    """mamba_ssm's `selective_scan_fn` contract (variable B/C, no z), one sample, channel and
    state at a time."""
    assert z is None and not return_last_state
    delta = delta + delta_bias[None, :, None] if delta_bias is not None else delta
    delta = torch.nn.functional.softplus(delta) if delta_softplus else delta
    out = torch.zeros_like(u)
    for b in range(u.shape[0]):
        for d in range(u.shape[1]):
            for n in range(A.shape[1]):
                state = torch.zeros(())
                for t in range(u.shape[2]):
                    step = delta[b, d, t]
                    state = torch.exp(step * A[d, n]) * state + step * B[b, n, t] * u[b, d, t]
                    out[b, d, t] += C[b, n, t] * state
    return out + u * D[None, :, None]


@pytest.fixture(scope="module")
def reference_module():
    """The authors' `mambavision.models.mamba_vision`, its scan import served by `_recurrence`."""
    pytest.importorskip("einops", reason="make setup installs einops for this test")
    pytest.importorskip("timm", reason="open_clip brings timm")
    names = ["mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface"]
    saved = {name: sys.modules.get(name) for name in names}
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    sys.modules[names[-1]].selective_scan_fn = _recurrence
    try:
        module = importlib.import_module("mambavision.models.mamba_vision")
    except ModuleNotFoundError as exc:
        pytest.fail(f"the reference package is missing ({exc}); `make setup` installs it: "
                    "pip install --no-deps mambavision==1.2.0")
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    return module


def _randomised_reference(module, window_size, seed=0):
    torch.manual_seed(seed)
    model = module.MambaVision(**TINY, window_size=window_size, layer_scale=0.5, layer_scale_conv=0.7,
                               num_classes=5, drop_path_rate=0.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator)
                # BatchNorm variances stay positive; everything else gets O(0.3) values
                tensor.copy_(noise.abs() + 0.5 if name.endswith("running_var") else 0.3 * noise)
    return model.eval()


def _checkpoint(folder: Path, model, window_size, **config) -> Path:
    """A checkpoint folder in the hub's layout: config.json and model.safetensors, keys under
    `model.`, classifier head included."""
    return save_mambavision(folder, model, {**TINY, "window_size": window_size, "model_type": "mambavision",
                                            **config})


@pytest.mark.parametrize("window_size", [[8, 8, 3, 2], [8, 8, 4, 2]], ids=["padded", "whole-windows"])
def test_backbone_equals_the_authors_network(reference_module, tmp_path, window_size):
    """Same weights, same outputs: the pooled feature and every stage, with and without window
    padding (96 px: hybrid stages at 6×6 and 3×3)."""
    reference = _randomised_reference(reference_module, window_size)
    folder = _checkpoint(tmp_path / "ckpt", reference, window_size)
    ours, _ = load_backbone(folder, "test")
    assert ours.arch.layer_scale and ours.arch.layer_scale_conv
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_close_relative(ours(images), reference.forward_features(images))
        x_ours, x_ref = ours.patch_embed(images), reference.patch_embed(images)
        _assert_close_relative(x_ours, x_ref)
        for level_ours, level_ref in zip(ours.levels, reference.levels, strict=True):
            x_ours, x_ref = level_ours(x_ours), level_ref(x_ref)
            _assert_close_relative(x_ours, x_ref)


def _assert_close_relative(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding at the tensor's own scale (stage outputs reach O(100) here)."""
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= 1e-6 * expected.abs().max()


def test_backbone_state_strips_prefixes_and_head():
    weight = torch.ones(1)
    assert backbone_state({"model.norm.weight": weight, "model.head.bias": weight}) == {"norm.weight": weight}
    assert backbone_state({"module.norm.weight": weight}) == {"norm.weight": weight}
    assert backbone_state({"norm.weight": weight, "head.weight": weight}) == {"norm.weight": weight}


# ---- the loader ----------------------------------------------------------------------------------


@pytest.fixture()
def tiny_checkpoint(tmp_path) -> Path:
    """A checkpoint folder of our own network (no reference package needed), BatchNorm statistics
    randomised so that the final norm is not the identity."""
    return build_mambavision(tmp_path / "MambaVision-tiny",
                             {**TINY, "window_size": [8, 8, 4, 2], "crop_pct": 0.875, "resolution": 112},
                             seed=0, layer_scale=True, random_norm=True)


class _Pickled:
    """An arbitrary object in a checkpoint: code the loader must not unpickle."""


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (240, 240, 4), dtype=np.uint8), mode="RGBA")]


def _spec(model: str, **options) -> EncoderSpec:
    return EncoderSpec(name="tiny", loader="mambavision", model=model, options=options)


def test_loader_pooled_and_layers(tiny_checkpoint):
    """Pooled = the network's output; 4 layers (stages 1–3 after downsampling, the normed last
    stage), whose last global token is the pooled feature; tokens are feature-map positions."""
    encoder = load_encoder(_spec(str(tiny_checkpoint)))
    images = encoder.prepare("image", _images())
    assert images.shape == (2, 3, 224, 224)
    encoded = encoder.encode("image", images, layers=True, tokens_per_sample=3,
                             generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        direct = encoder.model(images)
    torch.testing.assert_close(encoded.pooled, direct)
    assert [layer.shape[1] for layer in encoded.layers] == [32, 64, 128, 128]
    torch.testing.assert_close(encoded.layers[-1], encoded.pooled)
    tokens, rows = encoded.tokens[-1]
    assert tokens.shape == (6, 128) and rows.tolist() == [0, 0, 0, 1, 1, 1]
    assert encoder.preprocessing("image")["center_crop"] == 224
    assert encoder.describe()["loader"] == "mambavision"


def test_loader_model_transform_reads_the_checkpoint_config(tiny_checkpoint):
    encoder = load_encoder(_spec(str(tiny_checkpoint), image_transform="model"))
    assert encoder.prepare("image", _images()).shape == (2, 3, 112, 112)
    recorded = encoder.preprocessing("image")
    assert recorded["resize"] == 128 and recorded["center_crop"] == 112  # floor(112 / 0.875)


def test_loader_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"encoders\.tiny\.options\.bogus: unknown .*mambavision"):
        load_encoder(_spec(str(tiny_checkpoint), bogus=1))
    with pytest.raises(ConfigError, match=r"encoders\.tiny\.options\.image_transform: got 'hub'"):
        load_encoder(_spec(str(tiny_checkpoint), image_transform="hub"))
    with pytest.raises(ConfigError, match=r"encoders\.tiny\.model is required by .*mambavision"):
        load_encoder(EncoderSpec(name="tiny", loader="mambavision"))
    with pytest.raises(DownloadError, match=r"(?s)no-such-model.*internet.*HF_HOME"):
        load_encoder(_spec(str(tmp_path / "no-such-model")))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"config\.json not found"):
        load_encoder(_spec(str(empty)))
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    (tiny_checkpoint / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json is not valid JSON"):
        load_encoder(_spec(str(tiny_checkpoint)))
    (tiny_checkpoint / "config.json").write_text(json.dumps({**config, "dim": 24}))
    with pytest.raises(ConfigError, match=r"(?s)model\.safetensors do not fit.*config\.json.*missing: none"):
        load_encoder(_spec(str(tiny_checkpoint)))
    without_depths = {key: value for key, value in config.items() if key != "depths"}
    (tiny_checkpoint / "config.json").write_text(json.dumps(without_depths))
    with pytest.raises(ConfigError, match=r"config\.json: missing depths"):
        load_encoder(_spec(str(tiny_checkpoint)))
    (tiny_checkpoint / "config.json").write_text(json.dumps(config))
    (tiny_checkpoint / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"none of model\.safetensors, pytorch_model\.bin, \*\.pth\.tar"):
        load_encoder(_spec(str(tiny_checkpoint)))
    torch.save({"state_dict": {}, "hook": _Pickled()}, tiny_checkpoint / "last.pth.tar")
    with pytest.raises(ConfigError, match=r"last\.pth\.tar is not a plain tensor checkpoint"):
        load_encoder(_spec(str(tiny_checkpoint)))


def test_loader_reads_a_training_checkpoint_fetched_only_when_the_hub_has_nothing_else(
        tiny_checkpoint, tmp_path, monkeypatch):
    """A hub repo with only the authors' training checkpoint (weights under `state_dict`, bare keys):
    the loader asks for config.json + hub weights first, then for *.pth.tar."""
    from safetensors.torch import load_file

    state = {k[len("model."):]: v for k, v in load_file(str(tiny_checkpoint / "model.safetensors")).items()}
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    asked = []

    def snapshot_download(repo_id, allow_patterns, **kwargs):
        asked.append((repo_id, allow_patterns))
        if "*.pth.tar" in allow_patterns:
            torch.save({"state_dict": state, "epoch": 300, "args": argparse.Namespace(lr=1e-3)},
                       hub / "mambavision_tiny_1k.pth.tar")
        return str(hub)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    encoder = load_encoder(_spec("nvidia/MambaVision-tiny"))
    assert asked == [("nvidia/MambaVision-tiny", ["config.json", "model.safetensors", "pytorch_model.bin"]),
                     ("nvidia/MambaVision-tiny", ["config.json", "*.pth.tar"])]
    reference = load_encoder(_spec(str(tiny_checkpoint)))
    images = reference.prepare("image", _images())
    torch.testing.assert_close(encoder.encode("image", images).pooled,
                               reference.encode("image", images).pooled)
