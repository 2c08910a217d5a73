"""The five synthetic-data metrics of the heterogeneity paper (Appendix D.3, Eqs. 53–57).

With an image SAE (encoder z̃_I, decoder x̃) and a text SAE (z̃_T, ỹ), evaluation pairs (x, y) and
the ground-truth directions of the shared concepts (φ_i, ψ_i), i ∈ [n_S]:

    (i)   reconstruction error  ½ E[‖x − x̃(x)‖² + ‖y − ỹ(y)‖²]                          (53)
    (ii)  feature recovery error  1/(2 n_S) Σ_i ‖ψ_i − ỹ(ψ_i)‖² + ‖φ_i − x̃(φ_i)‖²            (54)
    (iii) latent alignment error  1 − E[cos(z̃_I(x), z̃_T(y))]                              (55)
    (iv)  feature alignment error 1 − 1/n_S Σ_i cos(z̃_I(φ_i), z̃_T(ψ_i))                    (56)
    (v)   feature collapse rate   1/n_S Σ_i 1[argmax_j cos(w_j, φ_i) = argmax_j cos(w_j, ψ_i)]   (57)

Squared errors are squared L2 norms summed over the d coordinates (as the equations write them),
averaged over samples or concepts; sums are accumulated in float64.

An "SAE" here is one stream of a `SparseAutoencoder`, given as `(model, stream)` (a single-stream
model may be passed alone). A shared SAE is `(model, 0)` and `(model, 1)` of a model built with
`shared_weights=True` (or one single-stream model passed for both); modality-specific SAEs are two
streams of one model with separate weights, or two models; a SPARC model is `(model, 0)` and
`(model, 1)`. Plain weight tensors become
such an SAE through `sae_from_weights`. Every input, ground-truth atoms included, goes through the
model's real forward pass: x − b_pre, the encoder, then the model's own selection (TopK/BatchTopK
and ReLU), decoded as W_dec z + b_pre. (The authors' code encodes atoms without subtracting b_pre.)
Each modality is encoded on its own, because the paper's z̃(x) depends on x alone: a Global TopK
model selects per stream here, as it would for unpaired inputs.

Choices the paper leaves open:
- Post-hoc alignment (Eq. 13) re-indexes the text latents; pass it to (iii)–(v) as
  `text_permutation`, in `xsae.alignment`'s convention: `text_permutation[i]` is the text latent
  paired with image latent i (a `LatentMatching` is accepted too). Equivalently, re-index the text
  SAE itself (`xsae.alignment.permute_stream_latents`) and pass no permutation.
- A code that is all zero has no direction; its cosine with anything counts as 0 (misaligned).
- (v) is written for one decoder W. With two decoders the indices are compared after
  `text_permutation`, and a concept counts as collapsed only when the two chosen decoder rows are also
  the same direction (cos ≥ 1 − `direction_tolerance`), i.e. one learned feature serves both
  modalities; for a shared SAE this is automatic, so the rate equals Eq. 57, while separate SAEs
  whose indices were aligned post hoc are not "collapsed". `direction_tolerance=None` counts index
  coincidence alone. cos(w_j, ·) uses normalised decoder rows; an all-zero row has cosine 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from xsae.sae import Codes, SAEConfig, SparseAutoencoder

SAEStream = tuple[SparseAutoencoder, int]
ArrayLike = torch.Tensor | np.ndarray | Sequence
_BLOCK_ENTRIES = 1 << 23


# ---- SAE views --------------------------------------------------------------------------------
def _resolve(sae: SAEStream | SparseAutoencoder, argument: str) -> SAEStream:
    if isinstance(sae, SparseAutoencoder):
        if sae.n_streams != 1:
            raise ValueError(f"{argument}: a model with {sae.n_streams} streams needs a stream index: "
                             "pass (model, stream)")
        return sae, 0
    if (not isinstance(sae, tuple) or len(sae) != 2 or not isinstance(sae[0], SparseAutoencoder)
            or isinstance(sae[1], bool) or not isinstance(sae[1], int | np.integer)):
        raise TypeError(f"{argument}: expected (SparseAutoencoder, stream index), got {type(sae).__name__}")
    model, stream = sae[0], int(sae[1])
    if not 0 <= stream < model.n_streams:
        raise ValueError(f"{argument}: stream {stream} out of range for a model with "
                         f"{model.n_streams} streams")
    return model, stream


def sae_from_weights(decoder: torch.Tensor, encoder: torch.Tensor | None = None,
                     pre_bias: torch.Tensor | None = None, lat_bias: torch.Tensor | None = None,
                     k: int | None = None) -> SAEStream:
    """A single-stream `SparseAutoencoder` holding the given weights, as `(model, 0)`.

    `decoder` and `encoder` are `[L, d]` (row j = latent j); the encoder defaults to the decoder
    (the tied W of the paper's Eq. 3), the biases to zero. `k` is the TopK size; None keeps every
    positive logit (plain ReLU, k = L). Decoder rows are used as given (not renormalised).
    """
    decoder = torch.as_tensor(decoder)
    if decoder.dim() != 2:
        raise ValueError(f"decoder: expected [L, d], got shape {list(decoder.shape)}")
    n_latents, d = decoder.shape
    encoder = decoder if encoder is None else torch.as_tensor(encoder)
    if encoder.shape != decoder.shape:
        raise ValueError(f"encoder: expected shape {list(decoder.shape)} like the decoder, "
                         f"got {list(encoder.shape)}")
    k = n_latents if k is None else k
    if not 1 <= k <= n_latents:
        raise ValueError(f"k: must be in [1, L={n_latents}], got {k}")
    # A private generator for the (overwritten) initial weights: the global RNG stays untouched.
    model = SparseAutoencoder(SAEConfig(input_dims=(d,), n_latents=n_latents, k=k),
                              generator=torch.Generator().manual_seed(0))
    model = model.to(decoder.dtype if decoder.is_floating_point() else torch.float32)
    with torch.no_grad():
        model.dec_weight[0].copy_(decoder)
        model.enc_weight[0].copy_(encoder)
        if pre_bias is not None:
            model.pre_bias[0].copy_(torch.as_tensor(pre_bias).reshape(d))
        if lat_bias is not None:
            model.lat_bias[0].copy_(torch.as_tensor(lat_bias).reshape(n_latents))
    model.eval()
    return model, 0


@contextlib.contextmanager
def _inference(model: SparseAutoencoder) -> Iterator[None]:
    """Eval mode (BatchTopK must use its learned threshold, not update it) and no autograd."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def encode_stream(sae: SAEStream, x: torch.Tensor) -> Codes:
    """Codes `[B, k]` of one stream's inputs `[B, d]` alone: logits of x − b_pre, then the model's
    own selection. Under Global TopK a single stream's logits are their own global score; under
    Local TopK the stream's own slot of the selection is used (so BatchTopK reads its threshold).
    Runs in eval mode without autograd and leaves the model's mode as it was."""
    model, stream = sae
    with _inference(model):
        logits = model.logits(stream, x)
        if model.config.topk == "global" or model.n_streams == 1:
            return model.select([logits])[0]
        return model.select([logits] * model.n_streams, topk="local")[stream]


def encode_chunks(sae: SAEStream, x: torch.Tensor, batch_size: int = 16384) -> Iterator[Codes]:
    """`encode_stream` over row chunks of `x`, lazily: the streamed form the correlations take."""
    return (encode_stream(sae, x[i:i + batch_size]) for i in range(0, len(x), batch_size))


def reconstruct_stream(sae: SAEStream, x: torch.Tensor) -> torch.Tensor:
    """`[B, d]` self-reconstruction W_dec z̃(x) + b_pre through the real forward pass."""
    model, stream = sae
    codes = encode_stream(sae, x)
    with torch.no_grad():
        return model.decode(stream, codes)


def _decoder_rows(sae: SAEStream) -> torch.Tensor:
    model, stream = sae
    return model.dec_weight[stream]


def _input_dim(sae: SAEStream) -> int:
    model, stream = sae
    return model.config.input_dims[stream]


def _batches(x: ArrayLike, sae: SAEStream, argument: str, batch_size: int) -> Iterator[torch.Tensor]:
    weight = _decoder_rows(sae)
    d = _input_dim(sae)
    if not hasattr(x, "shape"):
        x = np.asarray(x, dtype=np.float64)
    shape = tuple(x.shape)
    if len(shape) != 2 or shape[1] != d:
        raise ValueError(f"{argument}: expected [N, {d}] to match the SAE's input, got {list(shape)}")
    if shape[0] == 0:
        raise ValueError(f"{argument}: no rows")
    for start in range(0, shape[0], batch_size):
        yield torch.as_tensor(np.asarray(x[start:start + batch_size]) if not isinstance(x, torch.Tensor)
                              else x[start:start + batch_size]).to(weight.device, weight.dtype)


def _text_to_image_map(permutation: object | None, text: SAEStream, image: SAEStream) -> torch.Tensor | None:
    """The text→image latent map (the inverse of `permutation`) on the text SAE's device, after
    checking that `permutation` is a permutation of range(L) with L equal on both sides."""
    if permutation is None:
        return None
    # `xsae.alignment.LatentMatching` carries its permutation as an attribute.
    permutation = getattr(permutation, "permutation", permutation)
    perm = (permutation.detach().cpu() if isinstance(permutation, torch.Tensor)
            else torch.as_tensor(np.asarray(permutation)))
    n_text, n_image = _decoder_rows(text).shape[0], _decoder_rows(image).shape[0]
    if n_text != n_image:
        raise ValueError(f"text_permutation: the image and text SAEs have {n_image} and {n_text} latents; "
                         "a permutation needs equal counts")
    if (perm.dtype.is_floating_point or perm.dtype == torch.bool or perm.shape != (n_text,)
            or not torch.equal(torch.sort(perm.long()).values, torch.arange(n_text))):
        raise ValueError(f"text_permutation: must be an integer permutation of range({n_text}), got "
                         f"dtype {perm.dtype}, shape {list(perm.shape)}")
    inverse = torch.empty(n_text, dtype=torch.long)
    inverse[perm.long()] = torch.arange(n_text)
    return inverse.to(_decoder_rows(text).device)


# ---- code cosines ----------------------------------------------------------------------------
def code_cosines(a: Codes, b: Codes, width: int) -> torch.Tensor:
    """float64 `[B]` cosines between paired sparse codes (latent indices in a common space of size
    `width`); 0 where either code is all zero. Small k: match the k_a × k_b index pairs; large k:
    scatter-add into dense `[B, width]` rows (padding slots of value 0 add nothing). Rows are taken
    in blocks of at most ~8M intermediate entries."""
    values_a, values_b = a.values.double(), b.values.double()
    k_a, k_b = a.indices.shape[1], b.indices.shape[1]
    pairwise = k_a * k_b <= width
    block = max(1, _BLOCK_ENTRIES // (k_a * k_b if pairwise else width))
    dots = []
    for start in range(0, len(values_a), block):
        rows = slice(start, start + block)
        if pairwise:
            match = a.indices[rows, :, None] == b.indices[rows, None, :]
            dots.append((values_a[rows, :, None] * values_b[rows, None, :] * match).sum(dim=(1, 2)))
        else:
            dense_a = values_a.new_zeros(len(values_a[rows]), width).scatter_add_(1, a.indices[rows],
                                                                                  values_a[rows])
            dense_b = values_b.new_zeros(len(values_b[rows]), width).scatter_add_(1, b.indices[rows],
                                                                                  values_b[rows])
            dots.append((dense_a * dense_b).sum(dim=1))
    dot = torch.cat(dots) if dots else values_a.new_zeros(0)
    norms = values_a.norm(dim=1) * values_b.norm(dim=1)
    return torch.where(norms > 0, dot / norms.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def _mapped(codes: Codes, mapping: torch.Tensor | None) -> Codes:
    return codes if mapping is None else Codes(codes.values, mapping[codes.indices])


def _squared_errors(sae: SAEStream, batch: torch.Tensor, codes: Codes) -> float:
    """Σ_rows ‖x − (W_dec z + b_pre)‖² of one batch, in float64."""
    model, stream = sae
    with torch.no_grad():
        residual = (batch - model.decode(stream, codes)).double()
    return float(residual.pow(2).sum())


def _paired_pass(image: SAEStream, text: SAEStream, a: ArrayLike, b: ArrayLike,
                 mapping: torch.Tensor | None, batch_size: int, names: tuple[str, str]) -> dict[str, float]:
    """One encoding pass over paired rows: each modality's mean squared reconstruction error and the
    mean cosine of the paired codes (text indices mapped by `mapping`)."""
    if not hasattr(a, "shape"):
        a = np.asarray(a, dtype=np.float64)
    if not hasattr(b, "shape"):
        b = np.asarray(b, dtype=np.float64)
    n_rows = len(a)
    if n_rows != len(b):
        raise ValueError(f"{names[0]} and {names[1]} must be paired row by row, got {n_rows} and "
                         f"{len(b)} rows")
    width = _decoder_rows(image).shape[0] if mapping is not None \
        else max(_decoder_rows(image).shape[0], _decoder_rows(text).shape[0])
    image_error = text_error = cosine = 0.0
    for a_batch, b_batch in zip(_batches(a, image, names[0], batch_size),
                                _batches(b, text, names[1], batch_size), strict=True):
        codes_image, codes_text = encode_stream(image, a_batch), encode_stream(text, b_batch)
        image_error += _squared_errors(image, a_batch, codes_image)
        text_error += _squared_errors(text, b_batch, codes_text)
        codes_text = _mapped(codes_text, mapping)
        codes_text = Codes(codes_text.values.to(codes_image.values.device),
                           codes_text.indices.to(codes_image.indices.device))
        cosine += float(code_cosines(codes_image, codes_text, width).sum())
    return {"image": image_error / n_rows, "text": text_error / n_rows,
            "mean": (image_error + text_error) / (2 * n_rows), "cosine": cosine / n_rows}


# ---- the five metrics ------------------------------------------------------------------------
def _paired(image: SAEStream | SparseAutoencoder, text: SAEStream | SparseAutoencoder, a: ArrayLike,
            b: ArrayLike, text_permutation: object | None, batch_size: int,
            names: tuple[str, str]) -> dict[str, float]:
    image, text = _resolve(image, "image"), _resolve(text, "text")
    return _paired_pass(image, text, a, b, _text_to_image_map(text_permutation, text, image), batch_size,
                        names)


def reconstruction_errors(image: SAEStream | SparseAutoencoder, text: SAEStream | SparseAutoencoder,
                          x: ArrayLike, y: ArrayLike, batch_size: int = 4096) -> dict[str, float]:
    """(i) per modality and averaged (Eq. 53): mean over samples of ‖x − x̃(x)‖² (image), of
    ‖y − ỹ(y)‖² (text), and their mean."""
    result = _paired(image, text, x, y, None, batch_size, ("x", "y"))
    return {key: result[key] for key in ("image", "text", "mean")}


def reconstruction_error(image: SAEStream | SparseAutoencoder, text: SAEStream | SparseAutoencoder,
                         x: ArrayLike, y: ArrayLike, batch_size: int = 4096) -> float:
    """(i) Eq. 53: ½ E[‖x − x̃(x)‖² + ‖y − ỹ(y)‖²] over the evaluation pairs."""
    return reconstruction_errors(image, text, x, y, batch_size)["mean"]


def feature_recovery_errors(image: SAEStream | SparseAutoencoder, text: SAEStream | SparseAutoencoder,
                            phi: ArrayLike, psi: ArrayLike, batch_size: int = 4096) -> dict[str, float]:
    """(ii) per modality and averaged (Eq. 54): mean over atoms of ‖φ_i − x̃(φ_i)‖² (image), of
    ‖ψ_i − ỹ(ψ_i)‖² (text), and their mean."""
    result = _paired(image, text, phi, psi, None, batch_size, ("phi", "psi"))
    return {key: result[key] for key in ("image", "text", "mean")}


def feature_recovery_error(image: SAEStream | SparseAutoencoder, text: SAEStream | SparseAutoencoder,
                           phi: ArrayLike, psi: ArrayLike, batch_size: int = 4096) -> float:
    """(ii) Eq. 54: 1/(2 n_S) Σ_i ‖φ_i − x̃(φ_i)‖² + ‖ψ_i − ỹ(ψ_i)‖², atoms `[n_S, d]` as rows."""
    return feature_recovery_errors(image, text, phi, psi, batch_size)["mean"]


def latent_alignment_error(image: SAEStream | SparseAutoencoder, text: SAEStream | SparseAutoencoder,
                           x: ArrayLike, y: ArrayLike, text_permutation: object | None = None,
                           batch_size: int = 4096) -> float:
    """(iii) Eq. 55: 1 − E[cos(z̃_I(x), z̃_T(y))] over paired rows of x and y `[N, d]`.

    `text_permutation` (post-hoc alignment): see the module docstring."""
    return 1.0 - _paired(image, text, x, y, text_permutation, batch_size, ("x", "y"))["cosine"]


def feature_alignment_error(image: SAEStream | SparseAutoencoder, text: SAEStream | SparseAutoencoder,
                            phi: ArrayLike, psi: ArrayLike, text_permutation: object | None = None,
                            batch_size: int = 4096) -> float:
    """(iv) Eq. 56: 1 − 1/n_S Σ_i cos(z̃_I(φ_i), z̃_T(ψ_i)), with φ, ψ `[n_S, d]` paired by row."""
    return 1.0 - _paired(image, text, phi, psi, text_permutation, batch_size, ("phi", "psi"))["cosine"]


def nearest_latents(decoder: torch.Tensor, atoms: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """`[n]` argmax_j cos(w_j, a_i) for atoms `[n, d]` against decoder rows `[L, d]` (first index
    on ties; all-zero rows score 0), in float64, `batch_size` atoms at a time."""
    rows = decoder.detach().double()
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    atoms = atoms.to(rows.device, torch.float64)
    # ‖a_i‖ is constant along j, so it does not move the argmax.
    return torch.cat([(atoms[start:start + batch_size] @ rows.T).argmax(dim=1)
                      for start in range(0, len(atoms), batch_size)])


def collapsed_concepts(image: SAEStream | SparseAutoencoder, text: SAEStream | SparseAutoencoder,
                       phi: ArrayLike, psi: ArrayLike, text_permutation: object | None = None,
                       direction_tolerance: float | None = 1e-6, batch_size: int = 4096) -> torch.Tensor:
    """`[n_S]` bool: concept i's φ_i and ψ_i pick the same latent (after `text_permutation`) and, unless
    `direction_tolerance` is None, that latent's image and text decoder rows are one direction."""
    image, text = _resolve(image, "image"), _resolve(text, "text")
    mapping = _text_to_image_map(text_permutation, text, image)
    image_rows, text_rows = _decoder_rows(image), _decoder_rows(text)
    phi_t = torch.cat(list(_batches(phi, image, "phi", batch_size)))
    psi_t = torch.cat(list(_batches(psi, text, "psi", batch_size)))
    if len(phi_t) != len(psi_t):
        raise ValueError(f"phi and psi must be paired row by row, got {len(phi_t)} and {len(psi_t)} rows")
    image_pick = nearest_latents(image_rows, phi_t, batch_size)
    text_pick = nearest_latents(text_rows, psi_t, batch_size).to(image_pick.device)
    aligned = text_pick if mapping is None else mapping.to(image_pick.device)[text_pick]
    collapsed = image_pick == aligned
    if direction_tolerance is not None:
        a = image_rows.detach().double()[image_pick]
        b = text_rows.detach().double().to(a.device)[text_pick]
        norms = (a.norm(dim=1) * b.norm(dim=1)).clamp_min(torch.finfo(torch.float64).tiny)
        cosine = (a * b).sum(dim=1) / norms
        collapsed &= cosine >= 1.0 - direction_tolerance
    return collapsed


def feature_collapse_rate(image: SAEStream | SparseAutoencoder, text: SAEStream | SparseAutoencoder,
                          phi: ArrayLike, psi: ArrayLike, text_permutation: object | None = None,
                          direction_tolerance: float | None = 1e-6, batch_size: int = 4096) -> float:
    """(v) Eq. 57: the fraction of shared concepts whose φ_i and ψ_i land on one learned feature."""
    return float(collapsed_concepts(image, text, phi, psi, text_permutation, direction_tolerance,
                                    batch_size).double().mean())


def synthetic_metrics(image: SAEStream | SparseAutoencoder, text: SAEStream | SparseAutoencoder,
                      x: ArrayLike, y: ArrayLike, phi: ArrayLike, psi: ArrayLike,
                      text_permutation: object | None = None, direction_tolerance: float | None = 1e-6,
                      batch_size: int = 4096) -> dict[str, float]:
    """All five metrics (plus each modality's share of (i) and (ii)) for one method: evaluation
    pairs x, y `[N, d]` and the shared concepts' φ, ψ `[n_S, d]`."""
    data = _paired(image, text, x, y, text_permutation, batch_size, ("x", "y"))
    atoms = _paired(image, text, phi, psi, text_permutation, batch_size, ("phi", "psi"))
    return {
        "reconstruction_error": data["mean"],
        "reconstruction_error_image": data["image"],
        "reconstruction_error_text": data["text"],
        "feature_recovery_error": atoms["mean"],
        "feature_recovery_error_image": atoms["image"],
        "feature_recovery_error_text": atoms["text"],
        "latent_alignment_error": 1.0 - data["cosine"],
        "feature_alignment_error": 1.0 - atoms["cosine"],
        "feature_collapse_rate": feature_collapse_rate(image, text, phi, psi, text_permutation,
                                                       direction_tolerance, batch_size),
    }
