"""Zero-shot classification through the aligned latent space (heterogeneity paper, Table 1, ImageNet).

Protocol:

1. Prompts: every template × every class name, class-major (row c · T + t is template t of class c):
   the 80 OpenAI ImageNet templates (`template_set="openai_imagenet"`, read from
   `open_clip.zero_shot_metadata` when asked for) or the single "a photo of a {}." (`"photo"`).
2. Class embedding: the mean of the class's L2-normalised prompt embeddings, renormalised
   (`class_embeddings`); it is then encoded by the (aligned) text SAE into class codes.
3. Images are encoded by the image SAE; the prediction is the class whose code has the highest
   cosine with the image's code, and the score is top-1 accuracy.
4. Optional: latents that fire (value > 0) on more than `max_firing_rate` (½) of the images are
   dropped from both sides before the cosine, so a latent on for half the data cannot dominate it.

Where this differs from the authors' code: the latents to drop are chosen from firing rates
measured on TRAINING images (`train_firing_rates`); the authors measure them on the evaluation
images themselves, which lets the test set shape the classifier. Ties count against the image:
it is correct only when its class scores strictly above every other class (an image whose code is
all zero after dropping latents ties with every class and is never correct; argmax would silently
award it class 0).

Scores are computed by a sparse gather of the dense class-code matrix `[L, C]` (`F.embedding_bag`),
in chunks of images: memory O(L · C + batch · C), never `[N, L]` or `[N, k, C]`. Dense inputs (raw
embeddings, the embedding-space baseline) use one matmul per chunk. float64 by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from xsae.sae import Codes

Embeddings = torch.Tensor | Codes  # dense `[N, d]` or sparse codes `[N, k]`
Template = str | Callable[[str], str]

TEMPLATE_SETS = ("openai_imagenet", "photo")


# ---- prompts -----------------------------------------------------------------------------------------
def prompt_templates(template_set: str = "openai_imagenet") -> list[Template]:
    """The templates of a set: "openai_imagenet" (80, CLIP's; open_clip's `OPENAI_IMAGENET_TEMPLATES`)
    or "photo" (the single "a photo of a {}.")."""
    if template_set == "openai_imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    if template_set == "photo":
        return ["a photo of a {}."]
    raise ValueError(f"template_set must be one of {TEMPLATE_SETS}, got {template_set!r}")


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names CLIP's zero-shot evaluation uses (open_clip's `IMAGENET_CLASSNAMES`)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def class_prompts(class_names: Sequence[str], templates: str | Sequence[Template] = "openai_imagenet"
                  ) -> list[str]:
    """C · T prompts, class-major: prompt c · T + t is template t filled with class c.

    `templates`: a set name (see `prompt_templates`) or a list of format strings with one "{}" or
    callables name → prompt (open_clip ships its templates as lambdas).
    """
    chosen = prompt_templates(templates) if isinstance(templates, str) else list(templates)
    if not chosen:
        raise ValueError("templates is empty")
    if not class_names:
        raise ValueError("class_names is empty")

    def fill(template: Template, name: str) -> str:
        if callable(template):
            return template(name)
        if "{}" not in template:
            raise ValueError(f"template {template!r} has no '{{}}' for the class name")
        return template.format(name)

    return [fill(t, name) for name in class_names for t in chosen]


def class_embeddings(prompt_embeddings: torch.Tensor, n_classes: int) -> torch.Tensor:
    """`[C, d]` unit class embeddings: the mean of each class's L2-normalised prompt embeddings,
    renormalised (CLIP's prompt ensembling). `prompt_embeddings`: `[C · T, d]` class-major, as
    `class_prompts` orders them, or `[C, T, d]`. Computed in float64, returned in the input dtype."""
    x = prompt_embeddings.detach()
    if x.dim() == 2:
        if n_classes < 1 or x.shape[0] % n_classes:
            raise ValueError(f"prompt_embeddings has {x.shape[0]} rows, not a multiple of "
                             f"n_classes={n_classes}")
        x = x.reshape(n_classes, x.shape[0] // n_classes, x.shape[1])
    if x.dim() != 3 or x.shape[0] != n_classes or x.shape[1] < 1:
        raise ValueError(f"prompt_embeddings must be [C·T, d] or [C={n_classes}, T, d], "
                         f"got {list(prompt_embeddings.shape)}")
    norms = x.double().norm(dim=2, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("prompt_embeddings has an all-zero row: a prompt's direction is undefined")
    mean = (x.double() / norms).mean(dim=1)
    mean_norm = mean.norm(dim=1, keepdim=True)
    if bool((mean_norm == 0).any()):
        raise ValueError("a class's normalised prompt embeddings cancel out (zero mean)")
    return (mean / mean_norm).to(prompt_embeddings.dtype)


# ---- frequent latents ----------------------------------------------------------------------------------
def firing_rates(codes: Embeddings, n_latents: int) -> torch.Tensor:
    """float64 `[L]`: the fraction of rows on which each latent is > 0 (for `Codes`, or dense `[N, L]`)."""
    if isinstance(codes, Codes):
        n_rows = codes.indices.shape[0]
        if codes.indices.numel() and (codes.indices.min() < 0 or codes.indices.max() >= n_latents):
            raise ValueError(f"code indices must lie in [0, n_latents={n_latents})")
        counts = torch.zeros(n_latents, dtype=torch.float64, device=codes.indices.device)
        counts.index_add_(0, codes.indices.reshape(-1), (codes.values > 0).reshape(-1).double())
    else:
        if codes.dim() != 2 or codes.shape[1] != n_latents:
            raise ValueError(f"dense codes must be [N, n_latents={n_latents}], got {list(codes.shape)}")
        n_rows = codes.shape[0]
        counts = (codes > 0).sum(dim=0).double()
    if n_rows == 0:
        raise ValueError("codes have no rows: firing rates are undefined")
    return (counts / n_rows).cpu()


def keep_latents(train_firing_rates: torch.Tensor | np.ndarray, max_firing_rate: float = 0.5) -> torch.Tensor:
    """bool `[L]`: latents firing on at most `max_firing_rate` of the TRAINING images (rates from
    `firing_rates` on training codes) are kept; the rest are dropped before the cosine."""
    if not 0.0 <= max_firing_rate <= 1.0:
        raise ValueError(f"max_firing_rate must lie in [0, 1], got {max_firing_rate}")
    if isinstance(train_firing_rates, torch.Tensor):
        train_firing_rates = train_firing_rates.detach().cpu().numpy()
    rates = torch.as_tensor(np.asarray(train_firing_rates), dtype=torch.float64)
    if rates.dim() != 1 or bool(((rates < 0) | (rates > 1) | rates.isnan()).any()):
        raise ValueError("train_firing_rates must be a 1-D array of fractions in [0, 1]")
    return rates <= max_firing_rate


# ---- scoring ---------------------------------------------------------------------------------------
def _n_rows(x: Embeddings) -> int:
    return x.indices.shape[0] if isinstance(x, Codes) else x.shape[0]


def _masked_unit_codes(codes: Codes, keep: torch.Tensor | None, dtype: torch.dtype) -> Codes:
    """Codes with dropped latents zeroed and each row scaled to unit norm (zero rows stay zero)."""
    values = codes.values.detach().to(dtype)
    if keep is not None:
        values = values * keep.to(values.device)[codes.indices]
    norm = values.norm(dim=1, keepdim=True)
    return Codes(torch.where(norm > 0, values / norm.clamp_min(torch.finfo(dtype).tiny), 0.0), codes.indices)


def _masked_unit_dense(x: torch.Tensor, keep: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    x = x.detach().to(dtype)
    if keep is not None:
        x = x * keep.to(x.device)
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(torch.finfo(dtype).tiny), 0.0)


def _class_matrix(class_codes: Embeddings, width: int, keep: torch.Tensor | None,
                  dtype: torch.dtype) -> torch.Tensor:
    """Dense `[width, C]`: unit class codes (dropped latents zeroed) as columns."""
    if isinstance(class_codes, Codes):
        indices = class_codes.indices
        if indices.numel() and (indices.min() < 0 or indices.max() >= width):
            raise ValueError(f"class code indices must lie in [0, n_latents={width})")
        return _masked_unit_codes(class_codes, keep, dtype).dense(width).T.contiguous()
    if class_codes.dim() != 2 or class_codes.shape[1] != width:
        raise ValueError(f"class codes must be [C, {width}], got {list(class_codes.shape)}")
    return _masked_unit_dense(class_codes, keep, dtype).T.contiguous()


def _score_chunks(image_codes: Embeddings, class_codes: Embeddings, n_latents: int,
                  keep: torch.Tensor | None, batch_size: int, dtype: torch.dtype):
    """Yield (first image row, cosine scores `[B, C]`) chunk by chunk."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if keep is not None:
        keep = torch.as_tensor(keep, dtype=torch.bool)
        if keep.shape != (n_latents,):
            raise ValueError(f"keep has shape {list(keep.shape)}, expected [{n_latents}]")
    device = image_codes.values.device if isinstance(image_codes, Codes) else image_codes.device
    classes = _class_matrix(class_codes, n_latents, keep, dtype).to(device)  # [L, C]
    if isinstance(image_codes, Codes):
        if image_codes.indices.numel() and (image_codes.indices.min() < 0
                                            or image_codes.indices.max() >= n_latents):
            raise ValueError(f"image code indices must lie in [0, n_latents={n_latents})")
    elif image_codes.dim() != 2 or image_codes.shape[1] != n_latents:
        raise ValueError(f"image codes must be [N, {n_latents}], got {list(image_codes.shape)}")
    for lo in range(0, _n_rows(image_codes), batch_size):
        if isinstance(image_codes, Codes):
            chunk = _masked_unit_codes(Codes(image_codes.values[lo:lo + batch_size],
                                             image_codes.indices[lo:lo + batch_size]), keep, dtype)
            scores = F.embedding_bag(chunk.indices, classes, per_sample_weights=chunk.values, mode="sum")
        else:
            scores = _masked_unit_dense(image_codes[lo:lo + batch_size], keep, dtype) @ classes
        yield lo, scores


def _as_labels(labels: torch.Tensor | np.ndarray | Sequence[int], n_rows: int,
               n_classes: int) -> torch.Tensor:
    out = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels),
                          dtype=torch.long)
    if out.shape != (n_rows,):
        raise ValueError(f"labels has shape {list(out.shape)}, expected [{n_rows}]")
    if n_rows and (out.min() < 0 or out.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{int(out.min())}, {int(out.max())}]")
    return out


def zero_shot_predictions(image_codes: Embeddings, class_codes: Embeddings, n_latents: int, *,
                          keep: torch.Tensor | None = None, batch_size: int = 4096,
                          dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """LongTensor `[N]`: argmax over classes of cos(image code, class code) (lowest class on ties).

    `image_codes`: `[N, k]` `Codes` or dense `[N, n_latents]`; `class_codes`: `[C, k']` or dense
    `[C, n_latents]`; `keep`: bool `[n_latents]` (see `keep_latents`), None keeps all.
    """
    out = torch.empty(_n_rows(image_codes), dtype=torch.long)
    for lo, scores in _score_chunks(image_codes, class_codes, n_latents, keep, batch_size, dtype):
        out[lo:lo + scores.shape[0]] = scores.argmax(dim=1).cpu()
    return out


def zero_shot_correct(image_codes: Embeddings, class_codes: Embeddings,
                      labels: torch.Tensor | np.ndarray | Sequence[int], n_latents: int, *,
                      keep: torch.Tensor | None = None, batch_size: int = 4096,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """bool `[N]`: the image's class scores strictly above every other class (ties count as wrong)."""
    n_classes = _n_rows(class_codes)
    truth = _as_labels(labels, _n_rows(image_codes), n_classes)
    out = torch.empty(truth.shape[0], dtype=torch.bool)
    for lo, scores in _score_chunks(image_codes, class_codes, n_latents, keep, batch_size, dtype):
        rows = truth[lo:lo + scores.shape[0]].to(scores.device)
        target = scores.gather(1, rows.unsqueeze(1))
        out[lo:lo + scores.shape[0]] = ((scores >= target).sum(dim=1) == 1).cpu()
    return out


def zero_shot_accuracy(image_codes: Embeddings, class_codes: Embeddings,
                       labels: torch.Tensor | np.ndarray | Sequence[int], n_latents: int, *,
                       keep: torch.Tensor | None = None, batch_size: int = 4096,
                       dtype: torch.dtype = torch.float64) -> float:
    """Top-1 accuracy: the fraction of images whose class wins strictly (`zero_shot_correct`)."""
    correct = zero_shot_correct(image_codes, class_codes, labels, n_latents, keep=keep,
                                batch_size=batch_size, dtype=dtype)
    if correct.numel() == 0:
        raise ValueError("no images to classify")
    return float(correct.double().mean())


def zero_shot_table(image_codes: Embeddings, prompt_embeddings: torch.Tensor,
                    labels: torch.Tensor | np.ndarray | Sequence[int],
                    encode_text: Callable[[torch.Tensor], Embeddings], n_latents: int, *,
                    n_classes: int, train_firing_rates: torch.Tensor | np.ndarray | None = None,
                    max_firing_rate: float = 0.5, batch_size: int = 4096) -> pd.DataFrame:
    """Tidy Table 1 zero-shot rows: one per variant, columns (variant, accuracy, n_kept_latents,
    n_images, n_classes).

    `prompt_embeddings`: text-encoder embeddings of `class_prompts(...)`, `[C · T, d]` class-major;
    `encode_text`: `[C, d]` class embeddings → aligned text codes (the text SAE, with the alignment
    permutation applied); `image_codes`: the image SAE's codes of the evaluation images. Variant
    "all_latents" always; "drop_frequent" when `train_firing_rates` (image-side, measured on the
    training images) is given: latents above `max_firing_rate` are dropped.
    """
    class_codes = encode_text(class_embeddings(prompt_embeddings, n_classes))
    if _n_rows(class_codes) != n_classes:
        raise ValueError(f"encode_text returned {_n_rows(class_codes)} rows for {n_classes} classes")
    variants: list[tuple[str, torch.Tensor | None]] = [("all_latents", None)]
    if train_firing_rates is not None:
        keep = keep_latents(train_firing_rates, max_firing_rate)
        if keep.shape != (n_latents,):
            raise ValueError(f"train_firing_rates has {keep.shape[0]} entries, expected {n_latents}")
        variants.append(("drop_frequent", keep))
    rows = []
    for variant, keep in variants:
        accuracy = zero_shot_accuracy(image_codes, class_codes, labels, n_latents, keep=keep,
                                      batch_size=batch_size)
        rows.append({"variant": variant, "accuracy": accuracy,
                     "n_kept_latents": n_latents if keep is None else int(keep.sum()),
                     "n_images": _n_rows(image_codes), "n_classes": n_classes})
    return pd.DataFrame(rows)
