"""MambaVision (Hatamizadeh & Kautz, 2024), the sharedness paper's hybrid Mamba–attention visual
foundation model, rebuilt in plain PyTorch so that its published checkpoints load anywhere.

The hub's own code needs `trust_remote_code` and the CUDA-only `mamba_ssm` kernels. Here the
architecture is built from the checkpoint's `config.json` (depths, widths, heads, windows) and the
weights are loaded strictly, so any mismatch is an error naming the file; the selective scan runs
in PyTorch (float32 state, on CPU or GPU). Two quirks of the published network are kept because
the weights were trained with them: the time-step bias is added twice (once by `dt_proj`, once
inside the scan), and the attention of the hybrid stages also attends to the zero padding that
rounds a feature map up to whole windows.

Layers, for the sharedness comparisons (the paper uses only the last one): the output of stages
1–3 (after each stage's downsampling, as Swin's hidden states) and the last stage after the final
BatchNorm, whose spatial mean is exactly the pooled feature.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xsae.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAPER_PREPROCESSING,
    Encoder,
    EncoderSpec,
    paper_image_transform,
    register,
)
from xsae.encoders.paper import _check_options, _choice, _fetch, _hf_kwargs, _model_id, _weights_name
from xsae.errors import ConfigError

# Hub weights in order of preference; the authors' training checkpoints (*.pth.tar) come last.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TRAINING_CHECKPOINTS = "*.pth.tar"

# ---- the selective scan --------------------------------------------------------------------------


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor) -> torch.Tensor:
    """Mamba's selective state-space recurrence with input-dependent B, C and step size.

    Per channel d and state n: h_t = exp(Δ_t A_dn) h_{t−1} + Δ_t B_nt u_dt, y_dt = Σ_n C_nt h_t + D_d
    u_dt, with Δ = softplus(delta + delta_bias) and h_0 = 0. Shapes: u, delta `[b, d, L]`; A `[d, n]`;
    B, C `[b, n, L]`; D, delta_bias `[d]`. Computed in float32 whatever the input dtype (the state
    decays geometrically: half precision loses it), returned in u's dtype.
    """
    step = F.softplus(delta.float() + delta_bias.float()[:, None])  # [b, d, L]
    decay = torch.exp(step.unsqueeze(-1) * A.float()[:, None, :])  # [b, d, L, n]
    drive = (step * u.float()).unsqueeze(-1) * B.float().transpose(1, 2).unsqueeze(1)  # [b, d, L, n]
    state = torch.zeros_like(decay[:, :, 0])
    states = []
    for t in range(u.shape[-1]):
        state = decay[:, :, t] * state + drive[:, :, t]
        states.append(state)
    y = torch.einsum("bdln,bnl->bdl", torch.stack(states, dim=2), C.float())
    return (y + u.float() * D.float()[:, None]).to(u.dtype)


# ---- windows -------------------------------------------------------------------------------------


def to_windows(x: torch.Tensor, size: int) -> torch.Tensor:
    """`[B, C, H, W]` (H, W multiples of `size`) → `[B·(H/size)·(W/size), size², C]` token sequences,
    windows in row-major order, tokens row-major inside each window."""
    batch, channels, height, width = x.shape
    grid = x.reshape(batch, channels, height // size, size, width // size, size)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(-1, size * size, channels)


def from_windows(windows: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `to_windows`."""
    rows, cols = height // size, width // size
    channels = windows.shape[-1]
    grid = windows.reshape(-1, rows, cols, size, size, channels)
    return grid.permute(0, 5, 1, 3, 2, 4).reshape(-1, channels, height, width)


# ---- the network -------------------------------------------------------------------------------
# Module and parameter names follow the published checkpoints' state-dict keys.


@dataclass(frozen=True)
class MambaVisionArch:
    """What fixes the shapes of a MambaVision network; `from_config` reads a hub config.json."""

    dim: int
    in_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: tuple[int, ...]
    mlp_ratio: float = 4.0
    layer_scale: bool = False  # learned per-channel scales on the hybrid blocks' branches
    layer_scale_conv: bool = False  # … and on the convolutional blocks'

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str) -> MambaVisionArch:
        keys = ("dim", "in_dim", "depths", "num_heads", "window_size")
        missing = [k for k in keys if k not in config]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)} (a MambaVision config.json has "
                              f"{', '.join(keys)})")
        arch = cls(dim=int(config["dim"]), in_dim=int(config["in_dim"]),
                   depths=tuple(config["depths"]), num_heads=tuple(config["num_heads"]),
                   window_size=tuple(config["window_size"]),
                   mlp_ratio=float(config.get("mlp_ratio", 4.0)),
                   layer_scale=config.get("layer_scale") is not None,
                   layer_scale_conv=config.get("layer_scale_conv") is not None)
        if not len(arch.depths) == len(arch.num_heads) == len(arch.window_size) == 4:
            raise ConfigError(f"{where}: depths, num_heads and window_size must each list 4 stages, "
                              f"got {list(arch.depths)}, {list(arch.num_heads)}, {list(arch.window_size)}")
        return arch

    def width(self, stage: int) -> int:
        return self.dim * 2**stage

    @property
    def num_features(self) -> int:
        return self.width(len(self.depths) - 1)


class _Stem(nn.Module):
    """Two stride-2 3×3 convolutions with BatchNorm and ReLU: 1/4 resolution."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.conv_down = nn.Sequential(
            nn.Conv2d(3, in_dim, 3, 2, 1, bias=False), nn.BatchNorm2d(in_dim, eps=1e-4), nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim, eps=1e-4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_down(x)


class _ConvBlock(nn.Module):
    """Residual conv → BN → GELU(tanh) → conv → BN, optionally scaled per channel."""

    def __init__(self, dim: int, layer_scale: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.gamma = nn.Parameter(torch.ones(dim)) if layer_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.norm2(self.conv2(F.gelu(self.norm1(self.conv1(x)), approximate="tanh")))
        if self.gamma is not None:
            branch = branch * self.gamma[:, None, None]
        return x + branch


class _MambaMixer(nn.Module):
    """MambaVision's mixer: half the channels go through a causal-free depthwise conv and the
    selective scan, the other half through a depthwise conv only; both halves are concatenated
    (no gating) and projected back."""

    def __init__(self, dim: int, state_size: int = 8, conv_size: int = 3):
        super().__init__()
        half = dim // 2
        self.rank = math.ceil(dim / 16)
        self.state_size = state_size
        self.in_proj = nn.Linear(dim, dim, bias=False)
        self.x_proj = nn.Linear(half, self.rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(self.rank, half)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state_size + 1).float()).repeat(half, 1))
        self.D = nn.Parameter(torch.ones(half))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.conv1d_x = nn.Conv1d(half, half, conv_size, groups=half, bias=False, padding="same")
        self.conv1d_z = nn.Conv1d(half, half, conv_size, groups=half, bias=False, padding="same")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [b, L, dim]
        x, z = self.in_proj(tokens).transpose(1, 2).chunk(2, dim=1)  # each [b, dim/2, L]
        x, z = F.silu(self.conv1d_x(x)), F.silu(self.conv1d_z(z))
        step, B, C = self.x_proj(x.transpose(1, 2)).split(
            [self.rank, self.state_size, self.state_size], dim=-1)
        step = self.dt_proj(step).transpose(1, 2)  # includes dt_proj.bias; the scan adds it again
        y = selective_scan(x, step, -torch.exp(self.A_log.float()), B.transpose(1, 2),
                           C.transpose(1, 2), self.D, self.dt_proj.bias)
        return self.out_proj(torch.cat([y, z], dim=1).transpose(1, 2))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        q, k, v = self.qkv(tokens).reshape(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v)
        return self.proj(mixed.transpose(1, 2).reshape(batch, length, dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _HybridBlock(nn.Module):
    """Pre-norm residual block whose token mixer is a Mamba mixer or self-attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attention: bool, layer_scale: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = _Attention(dim, heads) if attention else _MambaMixer(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1 = nn.Parameter(torch.ones(dim)) if layer_scale else None
        self.gamma_2 = nn.Parameter(torch.ones(dim)) if layer_scale else None

    @staticmethod
    def _scaled(branch: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
        return branch if gamma is None else branch * gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._scaled(self.mixer(self.norm1(x)), self.gamma_1)
        return x + self._scaled(self.mlp(self.norm2(x)), self.gamma_2)


def attention_blocks(depth: int) -> range:
    """The blocks of a hybrid stage that use attention: the second half (the larger half is Mamba
    when the depth is odd)."""
    return range(depth // 2 + depth % 2, depth)


class _Downsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Sequential(nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(x)


class _Stage(nn.Module):
    """Convolutional stages (1, 2) work on the feature map; hybrid stages (3, 4) on windows of it,
    padded at the bottom and right to whole windows."""

    def __init__(self, arch: MambaVisionArch, index: int):
        super().__init__()
        dim, depth = arch.width(index), arch.depths[index]
        self.hybrid = index >= 2
        self.window = arch.window_size[index]
        if self.hybrid:
            attention = attention_blocks(depth)
            self.blocks = nn.ModuleList(
                _HybridBlock(dim, arch.num_heads[index], arch.mlp_ratio, i in attention, arch.layer_scale)
                for i in range(depth))
        else:
            self.blocks = nn.ModuleList(_ConvBlock(dim, arch.layer_scale_conv) for _ in range(depth))
        self.downsample = _Downsample(dim) if index < len(arch.depths) - 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hybrid:
            height, width = x.shape[-2:]
            padded = F.pad(x, (0, -width % self.window, 0, -height % self.window))
            tokens = to_windows(padded, self.window)
            for block in self.blocks:
                tokens = block(tokens)
            x = from_windows(tokens, self.window, *padded.shape[-2:])[..., :height, :width]
        else:
            for block in self.blocks:
                x = block(x)
        return x if self.downsample is None else self.downsample(x)


class MambaVisionBackbone(nn.Module):
    """The network up to the pooled feature (no classifier head): stem, four stages, BatchNorm,
    global average pool."""

    def __init__(self, arch: MambaVisionArch):
        super().__init__()
        self.arch = arch
        self.patch_embed = _Stem(arch.in_dim, arch.dim)
        self.levels = nn.ModuleList(_Stage(arch, i) for i in range(len(arch.depths)))
        self.norm = nn.BatchNorm2d(arch.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        for stage in self.levels:
            x = stage(x)
        return self.norm(x).mean(dim=(2, 3))

    def layer_modules(self) -> list[nn.Module]:
        """Stages 1–3 (after their downsampling) and the normed last stage."""
        return [*list(self.levels)[:-1], self.norm]


# ---- checkpoints ---------------------------------------------------------------------------------


def find_weights(folder: Path) -> Path | None:
    """The weight file a checkpoint folder offers first (WEIGHT_FILES, then training checkpoints)."""
    candidates = [*(folder / name for name in WEIGHT_FILES), *sorted(folder.glob(TRAINING_CHECKPOINTS))]
    return next((path for path in candidates if path.is_file()), None)


def _read_state_dict(path: Path, where: str) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:  # training checkpoints also hold their argparse arguments, harmless to unpickle
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        raise ConfigError(f"{where}: {path} is not a plain tensor checkpoint ({exc}); only weights are "
                          "loaded (no pickled code): save its state_dict with torch.save") from exc
    for key in ("state_dict", "model"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's weights from a hub checkpoint (keys under `model.`) or a training checkpoint
    (bare keys, possibly under `module.`), without the classifier head."""
    for prefix in ("model.", "module."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return {key: value for key, value in state.items() if not key.startswith("head.")}


def load_backbone(folder: Path, where: str) -> tuple[MambaVisionBackbone, dict[str, Any]]:
    """Build the network a checkpoint folder's config.json describes, load its weights strictly, and
    return it in eval mode (BatchNorm with its running statistics).

    Layer-scale parameters are present or absent as the weights say (config files of the hub
    checkpoints do not always record them)."""
    config_path = folder / "config.json"
    weight_names = ", ".join([*WEIGHT_FILES, TRAINING_CHECKPOINTS])
    if not config_path.is_file():
        raise ConfigError(f"{where}: {config_path} not found (a MambaVision checkpoint folder holds "
                          f"config.json and one of {weight_names})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: {config_path} is not valid JSON ({exc})") from exc
    weights = find_weights(folder)
    if weights is None:
        raise ConfigError(f"{where}: {folder} has none of {weight_names}")
    state = backbone_state(_read_state_dict(weights, where))
    arch = MambaVisionArch.from_config(config, str(config_path))
    arch = MambaVisionArch(**{**arch.__dict__,
                              "layer_scale": any(k.endswith(".gamma_1") for k in state),
                              "layer_scale_conv": any(k.endswith(".gamma") for k in state)})
    model = MambaVisionBackbone(arch)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    resized = [f"{key} {list(state[key].shape)} vs {list(value.shape)}" for key, value in expected.items()
               if key in state and state[key].shape != value.shape]
    if missing or unexpected or resized:
        def listing(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" … ({len(keys)} in all)" if len(keys) > 4 else "") or "none"

        raise ConfigError(f"{where}: the weights in {weights} do not fit the architecture of "
                          f"{config_path} (missing: {listing(missing)}; unexpected: {listing(unexpected)}; "
                          f"other shape: {listing(resized)}); is this a MambaVision checkpoint?")
    model.load_state_dict(state)
    return model.eval(), config


# ---- the encoder ---------------------------------------------------------------------------------


class MambaVision(Encoder):
    """MambaVision from a hub id (e.g. nvidia/MambaVision-B-1K) or a local checkpoint folder;
    pooled = the network's pooled feature (BatchNorm then global average), before the classifier.

    Images: the paper transform by default, or `image_transform: model`, the checkpoint's own
    evaluation transform (its crop_pct, resolution, mean and std; crop_pct 1 for the 1K models).
    """

    modalities = ("image",)

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        _check_options(spec, {
            "image_transform": "'paper' (default: resize 256, crop 224, ImageNet mean/std) or "
                               "'model' (the checkpoint's own evaluation transform)"})
        model_id = _model_id(spec, "nvidia/MambaVision-B-1K")
        self.transform_kind = _choice(spec, "image_transform", ("paper", "model"), "paper")
        folder = Path(model_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            def fetch(patterns: list[str]) -> Path:
                return Path(_fetch(spec, snapshot_download, model_id,
                                   allow_patterns=["config.json", *patterns], errors=(OSError, ValueError),
                                   **_hf_kwargs(spec)))

            folder = fetch(list(WEIGHT_FILES))
            if find_weights(folder) is None:  # only the training checkpoint: fetched on demand
                folder = fetch([TRAINING_CHECKPOINTS])
        self.model, config = load_backbone(folder, f"encoders.{spec.name}.model ({model_id})")
        self.model.eval().to(self.device)
        self.weights = _weights_name(spec)
        if self.transform_kind == "model":
            self._model_preprocessing = self._checkpoint_transform(config)
            p = self._model_preprocessing
            self._image_transform = paper_image_transform(p["resize"], p["center_crop"], p["mean"], p["std"])

    @staticmethod
    def _checkpoint_transform(config: dict[str, Any]) -> dict[str, Any]:
        size = config.get("resolution") or (config.get("input_size") or [3, 224, 224])[-1]
        crop_pct = float(config.get("crop_pct", 1.0))
        return {"resize": math.floor(size / crop_pct), "interpolation": "bicubic",
                "center_crop": int(size), "mean": list(config.get("mean", IMAGENET_MEAN)),
                "std": list(config.get("std", IMAGENET_STD)), "alpha": "composited on white"}

    def _encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.to(self.device))

    def layer_modules(self, modality: str) -> list[nn.Module]:
        return self.model.layer_modules()

    def preprocessing(self, modality: str) -> dict[str, Any]:
        if self.transform_kind == "model":
            return dict(self._model_preprocessing)
        return dict(PAPER_PREPROCESSING)


register("mambavision")(MambaVision)
