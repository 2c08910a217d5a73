"""The synthetic generator's settings (the heterogeneity paper's Appendix D.2), checked when built.

Apart from the generator (`xsae.synthetic`) so that validating a config needs numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xsae.errors import ConfigError


class SyntheticConfigError(ConfigError, ValueError):
    """A generator setting is invalid (catchable as either the project's ConfigError or ValueError)."""


class InfeasibleDictionaryError(SyntheticConfigError):
    """The requested directions cannot be placed in d dimensions under the interference bound."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings; defaults are the paper's (Appendix D.2) except `alignment`, which the
    paper sweeps (Figure 5: α ∈ {0, .2, .4, .6, .8, 1}; Figure 6 fixes cosine distance 0.5)."""

    d: int = 256
    n_shared: int = 1024
    n_image: int = 512
    n_text: int = 512
    #: α = cos(φ_i, ψ_i) for every shared concept (cosine distance d_cos = 1 − α).
    alignment: float = 0.5
    #: s = Pr(z_i = 0).
    sparsity: float = 0.99
    #: β of Exp(β) (rate; mean 1/β) for the active magnitudes.
    magnitude_rate: float = 1.0
    #: σ_obs of the Gaussian observation noise, per coordinate.
    noise_std: float = 0.05
    #: bound on |cos| between directions of distinct concepts (and image/text pairs of them).
    max_interference: float = 0.30
    n_train: int = 50_000
    n_eval: int = 10_000
    #: scale every embedding to unit L2 norm (the authors' code does; the paper does not say).
    normalize: bool = True
    #: True: y uses the same z as x (paper, Eq. 1); False: text magnitudes drawn independently on
    #: the same support (the authors' code).
    shared_magnitudes: bool = True
    seed: int = 0
    #: repair steps allowed before giving up, and steps without progress before giving up early.
    max_iterations: int = 2000
    patience: int = 200

    def __post_init__(self) -> None:
        for name in ("d", "n_train", "n_eval", "max_iterations", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise SyntheticConfigError(f"synthetic.{name} must be a positive integer, got {value!r}")
        for name in ("n_shared", "n_image", "n_text", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise SyntheticConfigError(f"synthetic.{name} must be a non-negative integer, got {value!r}")
        if self.n_shared + self.n_image < 1 or self.n_shared + self.n_text < 1:
            raise SyntheticConfigError(
                f"synthetic: each modality needs at least one concept (n_shared={self.n_shared}, "
                f"n_image={self.n_image}, n_text={self.n_text})")
        if not -1.0 <= self.alignment <= 1.0:
            raise SyntheticConfigError(
                f"synthetic.alignment is a cosine and must be in [-1, 1], got {self.alignment!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise SyntheticConfigError(f"synthetic.sparsity must be in [0, 1), got {self.sparsity!r}")
        if not self.magnitude_rate > 0:
            raise SyntheticConfigError(
                f"synthetic.magnitude_rate must be > 0, got {self.magnitude_rate!r}")
        if not self.noise_std >= 0:
            raise SyntheticConfigError(f"synthetic.noise_std must be >= 0, got {self.noise_std!r}")
        if not 0.0 <= self.max_interference <= 1.0:
            raise SyntheticConfigError(
                f"synthetic.max_interference must be in [0, 1], got {self.max_interference!r}")

    @property
    def n_concepts(self) -> int:
        return self.n_shared + self.n_image + self.n_text
