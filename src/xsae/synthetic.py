"""Synthetic paired image/text embeddings with known features (heterogeneity paper, Appendix D.2).

Concepts come in three kinds: `n_shared` present in both modalities, `n_image` image-only and
`n_text` text-only. Every concept has a unit direction per modality it lives in:

    image dictionary Φ = [Φ_S; Φ_I]  `[n_shared + n_image, d]`   (rows are directions)
    text dictionary  Ψ = [Ψ_S; Ψ_T]  `[n_shared + n_text, d]`

with cos(φ_i, ψ_i) = α exactly for every shared concept i, and |cos| ≤ `max_interference` for every
other pair of the joint dictionary [Φ_S; Φ_I; Ψ_S; Ψ_T] (image–image, text–text and image–text,
both signs). A pair (x, y) is drawn as

    z ∈ R₊ⁿ with z_i = 0 w.p. s, else z_i ~ Exp(rate)         (Bernoulli–Exponential, Eq. 2)
    x = Φ z + ε_I,  y = Ψ z + ε_T,   ε ~ N(0, σ² I)             (Eq. 1 with observation noise)

then (by default) each embedding is scaled to unit L2 norm, as the authors' code does before
training. The same z drives both modalities (the paper's Eq. 1: "the two embeddings share the same
latent code"); `shared_magnitudes=False` instead draws the text magnitudes independently on the
same support, as the authors' code does.

Construction of the directions (`make_dictionaries`): random Gaussian rows; each shared text
direction is parametrised as ψ_i = α φ_i + sqrt(1 − α²) u_i with u_i a unit vector orthogonal to
φ_i, so cos(φ_i, ψ_i) = α holds exactly after every step. Interference is then repaired by
gradient steps on Σ (|cos| − t)₊² over the violating pairs only (found by a chunked Gram scan and
applied as one sparse product), with t a little below the bound, followed by the retraction above.
The authors' version bounds only the positive side of the Gram matrix (dot products below −0.30
occur); this one bounds |cos|. Settings that cannot meet the bound fail with `InfeasibleDictionaryError`:
at once when the Welch bound proves it impossible, otherwise when the repair stalls.

Randomness: one `SeedSequence(seed)` spawns independent streams for the dictionaries, the train
split and the eval split (and, inside a split, for supports, magnitudes and noise), so the
dictionaries do not depend on the split sizes and the eval set does not depend on `n_train`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from xsae.errors import DataError
from xsae.io import atomic_path, read_npz, sha256_file, write_npz
from xsae.synthetic_config import InfeasibleDictionaryError, SyntheticConfig, SyntheticConfigError

GROUND_TRUTH_VERSION = 1
SPLITS = ("train", "eval")
_GRAM_CHUNK_ROWS = 1024
_EMBED_CHUNK_ROWS = 8192


@dataclass(frozen=True)
class Dictionaries:
    """Ground-truth unit directions as rows (float64), in the SAE decoder's layout `[n, d]`."""

    phi_shared: np.ndarray  # [n_shared, d]
    phi_image: np.ndarray  # [n_image, d]
    psi_shared: np.ndarray  # [n_shared, d]; row i pairs with phi_shared row i
    psi_text: np.ndarray  # [n_text, d]

    @property
    def image(self) -> np.ndarray:
        """Φ = [Φ_S; Φ_I] `[n_shared + n_image, d]`: the rows `SplitTruth.codes_image` indexes."""
        return np.concatenate([self.phi_shared, self.phi_image])

    @property
    def text(self) -> np.ndarray:
        """Ψ = [Ψ_S; Ψ_T] `[n_shared + n_text, d]`: the rows `SplitTruth.codes_text` indexes."""
        return np.concatenate([self.psi_shared, self.psi_text])

    @property
    def joint(self) -> np.ndarray:
        """[Φ_S; Φ_I; Ψ_S; Ψ_T] `[2 n_shared + n_image + n_text, d]`."""
        return np.concatenate([self.phi_shared, self.phi_image, self.psi_shared, self.psi_text])

    def max_interference(self) -> float:
        """max |cos| over all pairs of the joint dictionary except each (φ_i, ψ_i), in float64."""
        return _scan_interference(self.joint, _partners(*self._sizes()), threshold=math.inf)[3]

    def _sizes(self) -> tuple[int, int, int]:
        return len(self.phi_shared), len(self.phi_image), len(self.psi_text)


@dataclass(frozen=True)
class SplitTruth:
    """What generated one split: `[N, ·]` sparse codes over each modality's dictionary rows and the
    per-sample factor applied by normalisation.

    Before normalisation x_n = codes_image[n] @ Φ + ε_I; the stored embedding is
    image_scale[n] · (codes_image[n] @ Φ + ε_I) (likewise for text). Columns of `codes_image` are
    [shared concepts, image-only concepts]; of `codes_text`, [shared concepts, text-only concepts];
    the shared columns of the two have the same support.
    """

    codes_image: sp.csr_array  # [N, n_shared + n_image] float64
    codes_text: sp.csr_array  # [N, n_shared + n_text] float64
    image_scale: np.ndarray  # [N] float64
    text_scale: np.ndarray  # [N] float64


@dataclass(frozen=True)
class SyntheticSplit:
    image: np.ndarray  # [N, d] float32
    text: np.ndarray  # [N, d] float32
    truth: SplitTruth


@dataclass(frozen=True)
class SyntheticDataset:
    config: SyntheticConfig
    dictionaries: Dictionaries
    splits: dict[str, SyntheticSplit] = field(default_factory=dict)
    #: wall seconds per stage ("dictionaries", "train", "eval") of the run that produced it.
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def train(self) -> SyntheticSplit:
        return self.splits["train"]

    @property
    def eval(self) -> SyntheticSplit:
        return self.splits["eval"]


@dataclass(frozen=True)
class GroundTruth:
    """Everything but the embeddings, as stored beside the feature files."""

    config: SyntheticConfig
    dictionaries: Dictionaries
    splits: dict[str, SplitTruth]


# ---- dictionaries ------------------------------------------------------------------------------
def _partners(n_shared: int, n_image: int, n_text: int) -> np.ndarray:
    """Row index of each joint-dictionary row's matched partner (itself when it has none)."""
    partner = np.arange(2 * n_shared + n_image + n_text)
    first_psi = n_shared + n_image
    partner[:n_shared] = np.arange(first_psi, first_psi + n_shared)
    partner[first_psi:first_psi + n_shared] = np.arange(n_shared)
    return partner


def _scan_interference(joint: np.ndarray, partner: np.ndarray, threshold: float
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Pairs (rows, cols, signed excess) with |cos| > threshold, and the max |cos|, over all ordered
    pairs except self and matched pairs. The Gram is built `_GRAM_CHUNK_ROWS` rows at a time."""
    n_rows = len(joint)
    rows, cols, excess = [], [], []
    largest = 0.0
    for start in range(0, n_rows, _GRAM_CHUNK_ROWS):
        stop = min(n_rows, start + _GRAM_CHUNK_ROWS)
        gram = joint[start:stop] @ joint.T
        local = np.arange(stop - start)
        gram[local, np.arange(start, stop)] = 0.0
        gram[local, partner[start:stop]] = 0.0
        magnitude = np.abs(gram)
        largest = max(largest, float(magnitude.max(initial=0.0)))
        if math.isfinite(threshold):
            i, j = np.nonzero(magnitude > threshold)
            rows.append(i + start)
            cols.append(j)
            excess.append((magnitude[i, j] - threshold) * np.sign(gram[i, j]))
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0), largest
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(excess), largest


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _retract(free: np.ndarray, n_shared: int, n_image: int, alignment: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """Free rows [Φ_S; Φ_I; U; Ψ_T] → (retracted free rows, joint dictionary [Φ_S; Φ_I; Ψ_S; Ψ_T]).

    Unit rows, u_i made orthogonal to φ_i, and ψ_i = α φ_i + sqrt(1 − α²) u_i, so cos(φ_i, ψ_i) = α
    up to rounding whatever the step did.
    """
    first_u = n_shared + n_image
    phi_shared = _unit_rows(free[:n_shared])
    phi_image = _unit_rows(free[n_shared:first_u])
    u = free[first_u:first_u + n_shared]
    u = _unit_rows(u - (u * phi_shared).sum(axis=1, keepdims=True) * phi_shared)
    psi_text = _unit_rows(free[first_u + n_shared:])
    psi_shared = alignment * phi_shared + math.sqrt(max(0.0, 1.0 - alignment**2)) * u
    # Renormalise ψ_S: exact in real arithmetic, and it keeps the unit norm to rounding.
    psi_shared = _unit_rows(psi_shared)
    retracted = np.concatenate([phi_shared, phi_image, u, psi_text])
    joint = np.concatenate([phi_shared, phi_image, psi_shared, psi_text])
    return retracted, joint


def welch_bound(n_vectors: int, d: int) -> float:
    """Smallest possible max |cos| of `n_vectors` unit vectors in R^d (Welch, 1974): a necessary
    condition for any interference bound."""
    if n_vectors <= d:
        return 0.0
    return math.sqrt((n_vectors - d) / (d * (n_vectors - 1)))


def _check_feasible(config: SyntheticConfig) -> None:
    # [Φ_S; Φ_I; Ψ_T] is a set of n pairwise-bounded unit vectors (no matched pair inside it).
    bound = welch_bound(config.n_concepts, config.d)
    if bound > config.max_interference:
        raise InfeasibleDictionaryError(
            f"synthetic: {config.n_concepts} concepts (n_shared={config.n_shared}, n_image="
            f"{config.n_image}, n_text={config.n_text}) cannot have pairwise |cos| <= "
            f"max_interference={config.max_interference} in d={config.d} dimensions: the Welch "
            f"bound is {bound:.4f}. Raise d or max_interference, or use fewer concepts.")
    if config.d == 1 and config.n_shared and abs(config.alignment) < 1:
        raise InfeasibleDictionaryError(
            f"synthetic: in d=1 two unit directions have cos ±1, so alignment={config.alignment} "
            "is impossible")


def make_dictionaries(config: SyntheticConfig, rng: np.random.Generator | None = None,
                      margin: float = 0.01) -> Dictionaries:
    """Directions meeting cos(φ_i, ψ_i) = α exactly and |cos| ≤ max_interference elsewhere.

    Repair steps push violating pairs toward `max_interference − margin`, so the result usually
    keeps a little slack below the bound. Raises `InfeasibleDictionaryError` when the Welch bound
    rules the setting out, or when `patience` steps pass without lowering the worst interference
    (or `max_iterations` run out).
    """
    _check_feasible(config)
    if rng is None:
        rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(3)[0])
    n_shared, n_image, n_text, alignment = config.n_shared, config.n_image, config.n_text, config.alignment
    beta = math.sqrt(max(0.0, 1.0 - alignment**2))
    partner = _partners(n_shared, n_image, n_text)
    n_rows = len(partner)
    first_psi = n_shared + n_image
    bound, target = config.max_interference, max(0.0, config.max_interference - margin)
    free = rng.standard_normal((n_rows, config.d))
    best, best_step = math.inf, 0
    for step in range(config.max_iterations + 1):
        free, joint = _retract(free, n_shared, n_image, alignment)
        rows, cols, excess, largest = _scan_interference(joint, partner, target)
        if largest <= bound:
            return Dictionaries(joint[:n_shared].copy(), joint[n_shared:first_psi].copy(),
                                joint[first_psi:first_psi + n_shared].copy(),
                                joint[first_psi + n_shared:].copy())
        if largest < best - 1e-6:
            best, best_step = largest, step
        elif step - best_step >= config.patience:
            break
        # Gradient of ½ Σ (|g_ab| − t)₊² w.r.t. each row, damped by sqrt(#violations of that row)
        # so rows crowded by many neighbours do not overshoot.
        coefficients = sp.csr_array((excess, (rows, cols)), shape=(n_rows, n_rows))
        grad = coefficients @ joint
        counts = np.bincount(rows, minlength=n_rows)
        grad /= np.sqrt(np.maximum(counts, 1))[:, None]
        # Chain rule through ψ_i = α φ_i + β u_i (rows of U sit where Ψ_S sits in the joint layout).
        grad_psi_shared = grad[first_psi:first_psi + n_shared].copy()
        grad[:n_shared] += alignment * grad_psi_shared
        grad[first_psi:first_psi + n_shared] = beta * grad_psi_shared
        free = free - 0.5 * grad
    raise InfeasibleDictionaryError(
        f"synthetic: could not bring the interference of {n_rows} directions in d={config.d} down to "
        f"max_interference={bound} (best {best:.4f} after {step} repair steps; the Welch bound is "
        f"{welch_bound(config.n_concepts, config.d):.4f}). The setting is at or past what d allows: "
        "raise d or max_interference, or use fewer concepts.")


# ---- codes and embeddings ---------------------------------------------------------------------
def _bernoulli_support(n_rows: int, n_cols: int, p_active: float, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Row pointer and sorted column indices of an i.i.d. Bernoulli(p) `[n_rows, n_cols]` matrix.

    Drawn as geometric gaps between successes in the row-major flattening: the same distribution
    as one uniform per cell, at a cost proportional to the number of actives, not of cells.
    """
    total = n_rows * n_cols
    expected = total * p_active
    positions: list[np.ndarray] = []
    last = -1
    while last < total - 1:
        batch = int(expected + 8 * math.sqrt(expected + 1) + 64)
        steps = np.cumsum(rng.geometric(p_active, size=batch)) + last
        positions.append(steps)
        last = int(steps[-1])
    flat = np.concatenate(positions)
    flat = flat[flat < total]
    rows, cols = np.divmod(flat, n_cols)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols.astype(np.int64)


def _embed(codes: sp.csr_array, directions: np.ndarray, noise_std: float, normalize: bool,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """float32 `[N, d]` embeddings codes @ directions + noise (optionally unit-normed), and the scales."""
    n_rows, d = codes.shape[0], directions.shape[1]
    out = np.empty((n_rows, d), dtype=np.float32)
    scale = np.ones(n_rows)
    for start in range(0, n_rows, _EMBED_CHUNK_ROWS):
        stop = min(n_rows, start + _EMBED_CHUNK_ROWS)
        block = codes[start:stop] @ directions
        block += noise_std * rng.standard_normal((stop - start, d))
        if normalize:
            norms = np.linalg.norm(block, axis=1)
            if not np.all(norms > 0):
                raise DataError("synthetic: an embedding is exactly zero and cannot be normalised; "
                                "set noise_std > 0 or normalize=False")
            scale[start:stop] = 1.0 / norms
            block *= scale[start:stop, None]
        out[start:stop] = block
    return out, scale


def sample_split(config: SyntheticConfig, dictionaries: Dictionaries, n_samples: int,
                 seed: np.random.SeedSequence) -> SyntheticSplit:
    """`n_samples` pairs (x, y) drawn from the dictionaries (Appendix D.2), with their codes."""
    if n_samples < 1:
        raise SyntheticConfigError(f"synthetic: n_samples must be positive, got {n_samples}")
    support_rng, magnitude_rng, text_magnitude_rng, image_noise_rng, text_noise_rng = (
        np.random.default_rng(s) for s in seed.spawn(5))
    n_shared, n_image = config.n_shared, config.n_image
    indptr, cols = _bernoulli_support(n_samples, config.n_concepts, 1.0 - config.sparsity, support_rng)
    scale = 1.0 / config.magnitude_rate
    image_values = magnitude_rng.exponential(scale, size=len(cols))
    text_values = (image_values if config.shared_magnitudes
                   else text_magnitude_rng.exponential(scale, size=len(cols)))
    # Concept columns of z: [shared | image-only | text-only]; each modality keeps its own.
    shape = (n_samples, config.n_concepts)
    codes_image = sp.csr_array((image_values, cols, indptr), shape=shape)[:, :n_shared + n_image]
    text_columns = np.r_[0:n_shared, n_shared + n_image:config.n_concepts]
    codes_text = sp.csr_array((text_values, cols, indptr), shape=shape)[:, text_columns]
    image, image_scale = _embed(codes_image, dictionaries.image, config.noise_std, config.normalize,
                                image_noise_rng)
    text, text_scale = _embed(codes_text, dictionaries.text, config.noise_std, config.normalize,
                              text_noise_rng)
    return SyntheticSplit(image, text, SplitTruth(codes_image, codes_text, image_scale, text_scale))


def generate(config: SyntheticConfig | None = None) -> SyntheticDataset:
    """Dictionaries plus `n_train` training and `n_eval` evaluation pairs, all from `config.seed`."""
    config = config or SyntheticConfig()
    dictionary_seed, train_seed, eval_seed = np.random.SeedSequence(config.seed).spawn(3)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    dictionaries = make_dictionaries(config, np.random.default_rng(dictionary_seed))
    seconds["dictionaries"] = time.perf_counter() - start
    splits = {}
    for name, n_samples, seed in (("train", config.n_train, train_seed), ("eval", config.n_eval, eval_seed)):
        start = time.perf_counter()
        splits[name] = sample_split(config, dictionaries, n_samples, seed)
        seconds[name] = time.perf_counter() - start
    return SyntheticDataset(config, dictionaries, splits, seconds)


# ---- files ------------------------------------------------------------------------------------
def sample_ids(split: str, n_samples: int) -> list[str]:
    return [f"{split}-{i:06d}" for i in range(n_samples)]


def write_ground_truth(dataset: SyntheticDataset, path: str | Path) -> None:
    """Config, dictionaries and every split's codes and scales as one `.npz`, written atomically."""
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(GROUND_TRUTH_VERSION),
        "config": np.array(json.dumps(asdict(dataset.config))),
        "phi_shared": dataset.dictionaries.phi_shared, "phi_image": dataset.dictionaries.phi_image,
        "psi_shared": dataset.dictionaries.psi_shared, "psi_text": dataset.dictionaries.psi_text,
    }
    for name, split in dataset.splits.items():
        truth = split.truth
        for modality, codes in (("image", truth.codes_image), ("text", truth.codes_text)):
            arrays[f"{name}_codes_{modality}_indptr"] = codes.indptr
            arrays[f"{name}_codes_{modality}_indices"] = codes.indices
            arrays[f"{name}_codes_{modality}_values"] = codes.data
            arrays[f"{name}_codes_{modality}_shape"] = np.array(codes.shape)
        arrays[f"{name}_image_scale"] = truth.image_scale
        arrays[f"{name}_text_scale"] = truth.text_scale
    write_npz(path, **arrays)


def read_ground_truth(path: str | Path) -> GroundTruth:
    arrays = read_npz(path, "synthetic ground-truth file", "run the synthetic data rule first")
    version = int(arrays.get("format_version", -1))
    if version != GROUND_TRUTH_VERSION:
        raise DataError(f"{path}: ground-truth format version {version}, expected {GROUND_TRUTH_VERSION}; "
                        "generate it again")
    config = SyntheticConfig(**json.loads(str(arrays["config"])))
    dictionaries = Dictionaries(arrays["phi_shared"], arrays["phi_image"], arrays["psi_shared"],
                                arrays["psi_text"])
    splits = {}
    for name in SPLITS:
        if f"{name}_image_scale" not in arrays:
            continue
        codes = {modality: sp.csr_array(
            (arrays[f"{name}_codes_{modality}_values"], arrays[f"{name}_codes_{modality}_indices"],
             arrays[f"{name}_codes_{modality}_indptr"]),
            shape=tuple(int(v) for v in arrays[f"{name}_codes_{modality}_shape"]))
            for modality in ("image", "text")}
        splits[name] = SplitTruth(codes["image"], codes["text"], arrays[f"{name}_image_scale"],
                                  arrays[f"{name}_text_scale"])
    return GroundTruth(config, dictionaries, splits)


def write_feature_file(split: SyntheticSplit, split_name: str, path: str | Path, *,
                       config: SyntheticConfig, dataset_name: str = "synthetic",
                       ground_truth: str | Path | None = None) -> None:
    """One split as a feature file of the project's contract (see `xsae.features`), atomically:
    `sample_ids`, `pooled/image` and `pooled/text` float32 `[N, d]`, and the usual attributes. The
    ground-truth file plays the manifest's part (its path and sha256 are recorded)."""
    from xsae.features import FORMAT_VERSION  # here, not at the top: the generator's settings stay torch-free

    n_samples, d = split.image.shape
    synthetic_description = json.dumps({"generator": "xsae.synthetic", "l2_normalised": config.normalize})
    attrs = {"encoder": "synthetic", "loader": "xsae.synthetic", "model": "", "pretrained": "",
             "weights": "", "format_version": FORMAT_VERSION, "dtype": "float32",
             "dataset": dataset_name, "split": split_name,
             "manifest": str(ground_truth) if ground_truth else "",
             "manifest_sha256": sha256_file(ground_truth) if ground_truth else "",
             "modalities": json.dumps(["image", "text"]), "autocast": "none",
             "preprocessing_image": synthetic_description, "preprocessing_text": synthetic_description,
             "synthetic_config": json.dumps(asdict(config))}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("sample_ids", data=np.array(sample_ids(split_name, n_samples), dtype=object),
                          dtype=h5py.string_dtype("utf-8"))
        for key, value in attrs.items():
            h5.attrs[key] = value
        for modality, values in (("image", split.image), ("text", split.text)):
            h5.create_dataset(f"pooled/{modality}", data=values.astype(np.float32, copy=False),
                              chunks=(min(4096, n_samples), d))


def write_dataset(dataset: SyntheticDataset, train_path: str | Path, eval_path: str | Path,
                  ground_truth_path: str | Path, dataset_name: str = "synthetic") -> None:
    """Ground truth first, then one feature file per split that records its checksum."""
    write_ground_truth(dataset, ground_truth_path)
    for name, path in (("train", train_path), ("eval", eval_path)):
        write_feature_file(dataset.splits[name], name, path, config=dataset.config,
                           dataset_name=dataset_name, ground_truth=ground_truth_path)
