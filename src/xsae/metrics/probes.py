"""1-D logistic probes over single latents (SPARC §4.4 and Appendix A.3, after Gao et al.).

Protocol, per task t (t = the label column index):

1. Tasks: classes with at least `min_positives` positives among the labelled rows.
2. Balancing: as many negatives as positives, drawn without replacement from the labelled
   negatives with `numpy.random.default_rng(1000 + t)`. (If a class has more positives than there
   are negatives, the positives are drawn down to the number of negatives instead.) Both classes
   are then kept in increasing row order. A task whose balanced classes would have fewer than
   6 rows each (too few for three non-empty splits) is skipped.
3. Split 70/15/15, stratified, implemented here (not scikit-learn): each class of m rows is
   permuted with `default_rng(2000 + t)` (positives first, then negatives) and its first
   round(0.7·m) rows (half rounded up) go to training; each class's remaining rows are permuted
   with `default_rng(3000 + t)` and split in half, validation floor(r/2) and test the rest. Both
   classes have m rows, so every split holds exactly as many positives as negatives.
4. Features: binarised activations z > 0 (`binarize=True`, the paper) or the raw values
   (`binarize=False`; rows where the latent is not among the codes have z = 0).
5. Candidates: latents active (z > 0) on at least one training row, ranked by the number of
   POSITIVE TRAINING rows on which they are active, ties by the lower latent index; the top
   `n_candidates`. Validation and test rows are never looked at here (the reference ranks on all
   rows, test rows included, which leaks the test labels into the choice of candidates). A task
   with no active latent on its training rows gets one constant probe (latent −1, feature ≡ 0).
6. Probe: per candidate, L2-penalised logistic regression on one feature with an unpenalised
   intercept, minimising  Σ_i log-loss_i + w² / (2C), the objective scikit-learn's
   `LogisticRegression(C=C, solver="lbfgs")` minimises (it scales it by 1/(C·n), which moves no
   minimiser). The candidate with the lowest mean validation log-loss wins (ties: the better
   ranked candidate); its mean test log-loss is the task's score, and the mean over tasks the
   final number.

Every probe of every task is fitted at once by one batched, damped Newton method in float64
(`fit_logistic_1d`) on weighted points (problem, x, y, weight). With binarised features a probe
sees only four distinct points, (x, y) ∈ {0, 1}², whose weights are the counts n1_pos, n1_neg,
n0_pos, n0_neg, so the fit is exact and costs nothing per row; with raw values the points are the
non-zero entries plus two weighted points for the rows where the latent is zero. Newton is run to
convergence rather than stopped at a gradient tolerance, so the result is the exact minimiser
that scikit-learn approaches.

The only loop over tasks draws each task's rows and splits (a few permutations per task, because
the seeds are per task); ranking, counting, fitting and scoring are vectorised over tasks,
processed in chunks of about `chunk_rows` balanced rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy.special import expit

from xsae.sae import Codes

TRAIN, VAL, TEST = 0, 1, 2
#: smallest class size m for which all three splits are non-empty (round(0.7·6) = 4, then 1 + 1)
MIN_CLASS_SIZE = 6


# ---- inputs ----------------------------------------------------------------------------------
def _as_padded_codes(codes, n_latents: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices `[N, k]` int64, values `[N, k]` float); padding entries have value 0."""
    if isinstance(codes, Codes):
        idx = codes.indices.detach().cpu().numpy().astype(np.int64, copy=False)
        val = codes.values.detach().cpu().numpy()  # float32 stays float32 (gathered per chunk)
        val = val if np.issubdtype(val.dtype, np.floating) else val.astype(np.float64)
        if idx.shape != val.shape or idx.ndim != 2:
            raise ValueError(f"Codes values {val.shape} and indices {idx.shape} must both be [N, k]")
        if idx.size and (idx.min() < 0 or idx.max() >= n_latents):
            raise ValueError(f"code indices must lie in [0, n_latents={n_latents})")
        return idx, val
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    if sp.issparse(codes):
        coo = sp.coo_matrix(codes)
        n_rows = coo.shape[0]
        rows, cols, data = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
        keep = data != 0
        rows, cols, data = rows[keep], cols[keep], data[keep]
        order = np.lexsort((cols, rows))
        rows, cols, data = rows[order], cols[order], data[order]
    else:
        dense = np.asarray(codes)
        if dense.ndim != 2:
            raise ValueError(f"dense codes must be [N, L], got shape {dense.shape}")
        n_rows = dense.shape[0]
        rows, cols = np.nonzero(dense)
        data = dense[rows, cols]
    n_cols = coo.shape[1] if sp.issparse(codes) else dense.shape[1]
    if n_cols != n_latents:
        raise ValueError(f"dense codes have {n_cols} columns, expected n_latents={n_latents}")
    per_row = np.bincount(rows, minlength=n_rows)
    k = max(int(per_row.max(initial=0)), 1)
    slot = np.arange(rows.size) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    idx = np.zeros((n_rows, k), dtype=np.int64)
    val = np.zeros((n_rows, k), dtype=np.float64)
    idx[rows, slot] = cols
    val[rows, slot] = data
    return idx, val


def _positive_rows(labels, n_rows: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indptr `[C+1]`, rows): the labelled positive rows of class c, in increasing order, are
    `rows[indptr[c]:indptr[c+1]]`."""
    if sp.issparse(labels):
        csc = sp.csc_matrix(labels, copy=True)
        csc.data = csc.data != 0
        csc.eliminate_zeros()
        csc.sort_indices()
        n_classes = csc.shape[1]
        classes = np.repeat(np.arange(n_classes), np.diff(csc.indptr))
        rows = csc.indices.astype(np.int64)
    else:
        dense = np.asarray(labels)
        if dense.ndim != 2:
            raise ValueError(f"labels must be [N, C], got shape {dense.shape}")
        n_classes = dense.shape[1]
        rows, classes = _nonzero(dense)
        keys = classes.astype(np.int16 if n_classes <= np.iinfo(np.int16).max else np.int64)
        order = np.argsort(keys, kind="stable")  # class-major, rows increasing (radix sort on int16)
        rows, classes = rows[order], classes[order]
    if labels.shape[0] != n_rows:
        raise ValueError(f"labels have {labels.shape[0]} rows, codes have {n_rows}")
    if not mask.all():
        keep = mask[rows]
        classes, rows = classes[keep], rows[keep]
    rows = rows.astype(np.int64, copy=False)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(classes, minlength=n_classes))])
    return indptr, rows


def _nonzero(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.nonzero of a 2-D array, scanning a sparse bool matrix eight entries per word."""
    if dense.dtype != np.bool_ or not dense.flags.c_contiguous or dense.size % 8:
        return np.nonzero(dense)
    words = np.flatnonzero(dense.reshape(-1).view(np.uint64))
    within = np.flatnonzero(dense.reshape(-1, 8)[words])
    flat = words[within >> 3] * 8 + (within & 7)
    return np.divmod(flat, dense.shape[1])


# ---- sampling and splitting -------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSplit:
    """The balanced rows of one task: `rows[i]` has label `y[i]` and split `split[i]` (0/1/2)."""

    task: int
    n_pos: int  # positives of the class among the labelled rows, before balancing
    rows: np.ndarray  # [2m] int64
    y: np.ndarray  # [2m] bool
    split: np.ndarray  # [2m] int8: TRAIN, VAL or TEST

    def part(self, which: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, labels) of one split."""
        sel = self.split == which
        return self.rows[sel], self.y[sel]

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.part(TRAIN)

    @property
    def val(self) -> tuple[np.ndarray, np.ndarray]:
        return self.part(VAL)

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        return self.part(TEST)


def split_sizes(m: int) -> tuple[int, int, int]:
    """Per-class (train, val, test) sizes for a class of m rows: round(0.7·m), then halves."""
    n_train = (7 * m + 5) // 10
    rest = m - n_train
    return n_train, rest // 2, rest - rest // 2


def balanced_split(positives: np.ndarray, negatives: np.ndarray, task: int) -> TaskSplit | None:
    """Balance and split one task (steps 2–3 of the module docstring); None if too small.

    `positives` and `negatives` are the task's labelled row indices, each in increasing order.
    """
    positives = np.asarray(positives, dtype=np.int64)
    negatives = np.asarray(negatives, dtype=np.int64)
    return _balance_and_split(task, positives, negatives.size, negatives.__getitem__)


def _balance_and_split(task: int, positives: np.ndarray, n_negatives: int, negatives_at) -> TaskSplit | None:
    """`negatives_at(ranks)`: the rows of the negatives of those ranks in increasing row order."""
    n_pos = positives.size
    m = min(n_pos, n_negatives)
    if m < MIN_CLASS_SIZE:
        return None
    rng = np.random.default_rng(1000 + task)
    if n_negatives > m:
        # Same draw as rng.choice(negatives, m, replace=False), without listing every negative
        # (negatives_at is increasing, so sorting the ranks sorts the rows).
        negatives = negatives_at(np.sort(rng.choice(n_negatives, size=m, replace=False)))
    else:
        negatives = negatives_at(np.arange(n_negatives))
        if n_pos > m:
            positives = np.sort(rng.choice(positives, size=m, replace=False))
    n_train, n_val, _ = split_sizes(m)
    rng_train, rng_val = np.random.default_rng(2000 + task), np.random.default_rng(3000 + task)
    # Positions in the balanced set [positives, negatives] per class, first the 70/30 split ...
    perms = [rng_train.permutation(m), m + rng_train.permutation(m)]
    # ... then each class's remaining 30 % in half.
    split = np.empty(2 * m, dtype=np.int8)
    for perm in perms:
        split[perm[:n_train]] = TRAIN
        rest = perm[n_train:][rng_val.permutation(m - n_train)]
        split[rest[:n_val]] = VAL
        split[rest[n_val:]] = TEST
    rows = np.concatenate([positives, negatives])
    y = np.zeros(2 * m, dtype=bool)
    y[:m] = True
    return TaskSplit(task=task, n_pos=n_pos, rows=rows, y=y, split=split)


def task_splits(labels, *, mask=None, min_positives: int = 50) -> list[TaskSplit]:
    """Balanced 70/15/15 splits of every task with at least `min_positives` labelled positives.

    `labels`: multi-hot `[N, C]` (numpy or scipy.sparse); `mask`: `[N]` bool, rows with labels.
    Tasks that cannot be balanced into non-empty splits (class size < 6) are left out.
    """
    n_rows = labels.shape[0]
    mask = np.ones(n_rows, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != (n_rows,):
        raise ValueError(f"mask must be [N={n_rows}], got shape {mask.shape}")
    indptr, positive_rows = _positive_rows(labels, n_rows, mask)
    labelled = np.flatnonzero(mask)
    splits = []
    for task in np.flatnonzero(np.diff(indptr) >= min_positives):
        positives = positive_rows[indptr[task]:indptr[task + 1]]
        # The negative of rank r is labelled[r + #positives preceded by at most r negatives].
        position = positives if labelled.size == n_rows else np.searchsorted(labelled, positives)
        before = position - np.arange(positives.size)

        def negatives_at(ranks, before=before):
            return labelled[ranks + np.searchsorted(before, ranks, side="right")]

        split = _balance_and_split(int(task), positives, labelled.size - positives.size, negatives_at)
        if split is not None:
            splits.append(split)
    return splits


# ---- batched 1-D logistic regression ---------------------------------------------------------
def fit_logistic_1d(problem: np.ndarray, x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None,
                    *, n_problems: int | None = None, C: float = 1.0,
                    max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Fit many 1-D logistic regressions at once; returns (w, b), each `[n_problems]` float64.

    Point i (feature `x[i]`, label `y[i]` in {0, 1}, weight `weight[i]` ≥ 0, default 1) belongs
    to problem `problem[i]`. Problem p minimises Σ_{i∈p} weight_i·log-loss(y_i, σ(w_p x_i + b_p))
    + w_p²/(2C) — scikit-learn's LogisticRegression(C) objective with an unpenalised intercept.
    A problem without points gets (0, 0).

    Damped Newton in float64, run to convergence. Along a Newton step d, let R be the largest
    change of any logit of the problem, |dw|·max|x| + |db|. The log-loss has |ℓ‴| ≤ ℓ″, so the
    objective's curvature along the step grows at most like e^{R·t}, which bounds
    f(θ + t·d) ≤ f(θ) − λ²·(t − (e^{Rt} − 1 − Rt)/R²), λ² the Newton decrement. The whole step
    (t = 1) descends by this bound for R ≤ 1.5; longer steps take the bound's minimiser
    t = log(1 + R)/R. Descent is thus guaranteed without evaluating the objective, and the last
    steps are whole Newton steps, which converge quadratically.
    """
    problem = np.asarray(problem, dtype=np.int64)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    weight = np.ones_like(x) if weight is None else np.asarray(weight, dtype=np.float64)
    P = int(problem.max(initial=-1)) + 1 if n_problems is None else int(n_problems)
    x_max = np.zeros(P)
    used = weight > 0
    np.maximum.at(x_max, problem[used], np.abs(x[used]))
    w = np.zeros(P)
    b = np.zeros(P)
    done = np.zeros(P, dtype=bool)
    points = np.bincount(problem, minlength=P)  # per problem, among the points still iterated
    for _ in range(max_iter):
        p = np.take(w, problem)
        p *= x
        p += np.take(b, problem)
        expit(p, out=p)
        r = p - y  # weighted residuals and curvatures, in place: r·q, r·q·x; s·q, s·q·x, s·q·x²
        r *= weight
        gb = np.bincount(problem, r, minlength=P)
        r *= x
        gw = np.bincount(problem, r, minlength=P) + w / C
        s = 1.0 - p
        s *= p
        s *= weight
        hbb = np.bincount(problem, s, minlength=P)
        s *= x
        hwb = np.bincount(problem, s, minlength=P)
        s *= x
        hww = np.bincount(problem, s, minlength=P) + 1.0 / C
        det = hww * hbb - hwb * hwb
        flat = det <= 1e-300 * np.maximum(hww * hbb, 1.0)  # no curvature in b: no points
        det = np.where(flat, 1.0, det)
        dw = np.where(flat, -gw / hww, -(hbb * gw - hwb * gb) / det)
        db = np.where(flat, 0.0, -(hww * gb - hwb * gw) / det)
        dw[done] = 0.0
        db[done] = 0.0
        shift = np.abs(dw) * x_max + np.abs(db)
        step = np.ones(P)
        far = shift > 1.5
        step[far] = np.log1p(shift[far]) / shift[far]
        w += step * dw
        b += step * db
        # After a whole step this small, what is left is of order shift² (quadratic convergence).
        done |= shift <= 1e-9
        if done.all():
            break
        if points[done].sum() > problem.size // 4:
            # Leave converged problems' points behind: each problem's sums keep their own points in
            # the same order, so the others' iterates do not change by a bit.
            keep = ~done[problem]
            problem, x, y, weight = problem[keep], x[keep], y[keep], weight[keep]
            points[done] = 0
    return w, b


def fit_logistic_1d_counts(n1_pos, n1_neg, n0_pos, n0_neg, *,
                           C: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Exact fit of binary-feature probes from counts (feature 1/0 × label pos/neg); (w, b) arrays."""
    problem, x, y, weight = _count_points(n1_pos, n1_neg, n0_pos, n0_neg)
    shape = np.shape(n1_pos)
    w, b = fit_logistic_1d(problem, x, y, weight, n_problems=int(np.prod(shape)), C=C)
    return w.reshape(shape), b.reshape(shape)


def _count_points(n1_pos, n1_neg, n0_pos, n0_neg):
    """Four weighted points per problem: (x, y) = (1, 1), (1, 0), (0, 1), (0, 0)."""
    counts = (n1_pos, n1_neg, n0_pos, n0_neg)
    weight = np.stack([np.ravel(np.asarray(c, dtype=np.float64)) for c in counts], axis=1)
    n = weight.shape[0]
    problem = np.repeat(np.arange(n), 4)
    x = np.tile([1.0, 1.0, 0.0, 0.0], n)
    y = np.tile([1.0, 0.0, 1.0, 0.0], n)
    return problem, x, y, weight.ravel()


def _mean_loss(points, w, b, n_problems, total):
    """Mean log-loss per problem over its points (weights summing to `total`)."""
    problem, x, y, weight = points
    z = np.take(w, problem) * x + np.take(b, problem)  # log-loss = softplus(z) − y·z
    loss = np.bincount(problem, weight * (np.logaddexp(0.0, z) - y * z), minlength=n_problems)
    with np.errstate(invalid="ignore", divide="ignore"):
        return loss / total


# ---- the evaluation --------------------------------------------------------------------------
@dataclass
class ProbeResult:
    """Per-task table, the mean test loss, and every candidate's probe (`[T, K]`, −1/NaN padded)."""

    table: pd.DataFrame
    mean_test_loss: float
    tasks: np.ndarray  # [T] label column of each row of the arrays below
    candidates: np.ndarray  # [T, K] latent ids in rank order, −1 = none
    weight: np.ndarray  # [T, K]
    intercept: np.ndarray  # [T, K]
    val_loss: np.ndarray  # [T, K] mean validation log-loss
    test_loss: np.ndarray  # [T, K] mean test log-loss
    splits: list[TaskSplit] = field(repr=False, default_factory=list)


def _chunks(sizes: np.ndarray, chunk_rows: int):
    """Consecutive task ranges [t0, t1) holding about `chunk_rows` rows each (≥ 1 task)."""
    t0, acc = 0, 0
    for t, n in enumerate(sizes):
        acc += int(n)
        if acc >= chunk_rows:
            yield t0, t + 1
            t0, acc = t + 1, 0
    if t0 < len(sizes):
        yield t0, len(sizes)


def _top_candidates(n_pos: np.ndarray, n_active: np.ndarray, n_candidates: int) -> np.ndarray:
    """`[T, K]` candidates from `[T, L]` training counts (−1 where fewer latents are active)."""
    n_tasks, n_latents = n_pos.shape
    small = (int(n_pos.max(initial=0)) + 1) * n_latents < np.iinfo(np.int32).max
    latent = np.arange(n_latents, dtype=np.int32 if small else np.int64)
    # Unique per task, smallest first: more positive training activations, then the lower index.
    rank = np.where(n_active > 0, latent - (n_latents - 1) - n_pos.astype(latent.dtype) * n_latents, 1)
    K = min(n_candidates, n_latents)
    top = np.argpartition(rank, K - 1, axis=1)[:, :K] if n_latents > K else np.tile(latent, (n_tasks, 1))
    top = np.take_along_axis(top, np.argsort(np.take_along_axis(rank, top, 1), axis=1, kind="stable"), 1)
    out = np.full((n_tasks, n_candidates), -1, dtype=np.int64)
    out[:, :K] = np.where(np.take_along_axis(rank, top, 1) <= 0, top, -1)
    return out


#: the six row categories (split, label), in the order rows are laid out within a task
_CATEGORIES = [(split, y) for split in (TRAIN, VAL, TEST) for y in (1, 0)]


@dataclass(frozen=True)
class _Layout:
    """Every task's rows in category order, concatenated: task t owns rows[offsets[t]:offsets[t+1]],
    and its category c (index into _CATEGORIES) the sub-range starting at starts[t, c]."""

    rows: np.ndarray  # [R] int64
    offsets: np.ndarray  # [T+1]
    starts: np.ndarray  # [T, 7]: category boundaries, absolute positions in `rows`

    def category(self, t: int, c: int) -> np.ndarray:
        return self.rows[self.starts[t, c]:self.starts[t, c + 1]]


def _layout(splits: list[TaskSplit]) -> _Layout:
    parts, starts, offset = [], np.zeros((len(splits), 7), dtype=np.int64), 0
    for t, split in enumerate(splits):
        category = (2 * split.split + ~split.y).astype(np.int8)
        order = np.argsort(category, kind="stable")  # a radix sort on 8-bit keys
        parts.append(split.rows[order])
        starts[t] = offset + np.searchsorted(category[order], np.arange(7))
        offset += split.rows.size
    rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    offsets = np.concatenate([starts[:, 0], [offset]]) if len(splits) else np.zeros(1, np.int64)
    return _Layout(rows, offsets, starts)


def _rank_candidates(layout: _Layout, active: np.ndarray, n_latents: int, n_candidates: int,
                     chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """`[T, K]` candidates (step 5) and how many positive training rows each fires on: counts of
    each latent on each task's positive training rows; its negative training rows are counted
    only for a task where fewer than K latents fire on its positives (only then can a latent
    active on negatives alone be among the top K).

    `active`: `[N, k]` latent of each code entry that fires (> 0), `n_latents` where it does not.
    """
    T, L = layout.starts.shape[0], n_latents
    candidates = np.full((T, n_candidates), -1, dtype=np.int64)
    positives = np.zeros((T, n_candidates), dtype=np.int64)
    sizes = layout.starts[:, 1] - layout.starts[:, 0]

    def counts(t: int, category: int) -> np.ndarray:
        return np.bincount(np.take(active, layout.category(t, category), axis=0).ravel(), minlength=L + 1)[:L]

    for t0, t1 in _chunks(sizes, chunk_rows):
        n_pos = np.stack([counts(t, 0) for t in range(t0, t1)])
        n_active = n_pos.copy()
        for t in np.flatnonzero(np.count_nonzero(n_pos, axis=1) < n_candidates):
            n_active[t] += counts(t0 + t, 1)
        chosen = _top_candidates(n_pos, n_active, n_candidates)
        candidates[t0:t1] = chosen
        positives[t0:t1] = np.where(chosen >= 0, np.take_along_axis(n_pos, np.maximum(chosen, 0), 1), 0)
    return candidates, positives


def _feature_table(idx: np.ndarray, val: np.ndarray, latents: np.ndarray, binarize: bool) -> np.ndarray:
    """`[len(latents), N]`: each listed latent's feature on every row (z > 0, or the raw value).

    With `binarize`, `idx` is the firing latents' table (`active`: non-firing entries hold an
    index past every latent) and `val` is not read."""
    column = np.full(int(max(idx.max(initial=0), latents.max(initial=0))) + 1, -1, dtype=np.int32)
    column[latents] = np.arange(latents.size)
    n_rows = idx.shape[0]
    table = np.zeros((latents.size, n_rows), dtype=bool if binarize else val.dtype)
    hit = np.flatnonzero(np.take(column >= 0, idx) & (True if binarize else val != 0))
    rows = hit // idx.shape[1]
    table[np.take(column, idx.ravel()[hit]), rows] = True if binarize else val.ravel()[hit]
    return table


def _candidate_features(layout: _Layout, candidates: np.ndarray, positives: np.ndarray, idx: np.ndarray,
                        val: np.ndarray, active: np.ndarray, binarize: bool, table_bytes: int):
    """Per task and candidate, the rows of each category where its feature is non-zero (`[T, K, 6]`
    counts) and, for raw values, those non-zero entries (problem t·K + slot, value) per category.
    Binarised features on positive training rows are the ranking's counts (`positives`).

    The candidates' features are gathered from a dense latent × row table of as many tasks'
    candidates at once as `table_bytes` allows, so each task costs K gathers of its own rows.
    """
    T, K = candidates.shape
    n_rows = idx.shape[0]
    n1 = np.zeros((T, K, 6), dtype=np.int64)
    entries: list[list] = [[] for _ in _CATEGORIES]
    first = 1 if binarize else 0  # the category the gathers start at
    if binarize:
        n1[..., 0] = positives
    per_latent = n_rows * (1 if binarize else val.itemsize)
    t0 = 0
    while t0 < T:
        group, t1 = set(), t0
        while t1 < T:
            grown = group | set(candidates[t1][candidates[t1] >= 0].tolist())
            if t1 > t0 and len(grown) * per_latent > table_bytes:
                break
            group, t1 = grown, t1 + 1
        latents = np.array(sorted(group), dtype=np.int64)
        table = _feature_table(active if binarize else idx, val, latents, binarize)
        slot = np.searchsorted(latents, candidates[t0:t1])
        for t in range(t0, t1):
            rows = layout.rows[layout.starts[t, first]:layout.offsets[t + 1]]
            cuts = layout.starts[t, first:6] - layout.starts[t, first]
            valid = np.flatnonzero(candidates[t] >= 0)
            features = np.empty((valid.size, rows.size), dtype=table.dtype)
            for i, k in enumerate(valid):
                np.take(table[slot[t - t0, k]], rows, out=features[i])
            nonzero = features if binarize else features != 0
            n1[t, valid, first:] = np.add.reduceat(nonzero, cuts, axis=1, dtype=np.int64)
            if not binarize:
                bounds = [*cuts, rows.size]
                for c in range(6):
                    block = features[:, bounds[c]:bounds[c + 1]]
                    which, _ = np.nonzero(block)
                    entries[c].append((t * K + valid[which], block[block != 0]))
        t0 = t1
    return n1, entries


def evaluate_1d_probes(codes: Codes | np.ndarray | torch.Tensor | sp.spmatrix, labels, *, n_latents: int,
                       mask=None, min_positives: int = 50, n_candidates: int = 20, binarize: bool = True,
                       C: float = 1.0, chunk_rows: int = 65536,
                       table_bytes: int = 256 * 2**20) -> ProbeResult:
    """1-D probe losses of one stream's codes on every task (see the module docstring).

    `codes`: `Codes` (values/indices `[N, k]`) or dense `[N, L]` (numpy, torch or scipy.sparse).
    `labels`: multi-hot `[N, C]`, numpy or scipy.sparse; `mask`: optional `[N]` bool of labelled
    rows. Returns a `ProbeResult`; `table` has one row per task with columns task, n_pos,
    n_train, n_val, n_test, n_candidates, best_latent, weight, intercept, val_loss, test_loss.
    """
    if n_candidates < 1:
        raise ValueError("n_candidates must be at least 1")
    idx_codes, val_codes = _as_padded_codes(codes, n_latents)
    if labels.shape[0] != idx_codes.shape[0]:
        raise ValueError(f"labels have {labels.shape[0]} rows, codes have {idx_codes.shape[0]}")
    splits = task_splits(labels, mask=mask, min_positives=min_positives)
    T, K, L = len(splits), n_candidates, n_latents
    layout = _layout(splits)
    totals = np.diff(layout.starts, axis=1)  # rows per (task, category)
    active = np.where(val_codes > 0, idx_codes, L)
    narrow = L <= 32766  # int16 holds the index L ("not firing") too
    active = active.astype(np.int16 if narrow else np.int64)
    candidates, positives = _rank_candidates(layout, active, L, K, chunk_rows)
    n1, entries = _candidate_features(layout, candidates, positives, idx_codes, val_codes, active, binarize,
                                      table_bytes)

    n0 = totals[:, None, :] - n1
    valid = candidates >= 0
    valid[:, 0] = True  # no active latent: one constant probe (latent −1, n1 = 0)
    P = T * K

    def points(which: int):
        """The weighted points (problem, x, y, weight) of one split."""
        c_pos, c_neg = _CATEGORIES.index((which, 1)), _CATEGORIES.index((which, 0))
        if binarize:
            return _count_points(n1[..., c_pos], n1[..., c_neg], n0[..., c_pos], n0[..., c_neg])
        problem = [np.arange(P), np.arange(P)]
        x = [np.zeros(P), np.zeros(P)]
        y = [np.ones(P), np.zeros(P)]
        weight = [n0[..., c_pos].ravel(), n0[..., c_neg].ravel()]
        for c in (c_pos, c_neg):
            for prob, val in entries[c]:
                problem.append(prob)
                x.append(val)
                y.append(np.full(prob.size, float(c == c_pos)))
                weight.append(np.ones(prob.size))
        return tuple(np.concatenate(a) for a in (problem, x, y, weight))

    w, b = fit_logistic_1d(*points(TRAIN), n_problems=P, C=C)
    n_split = totals.reshape(T, 3, 2).sum(axis=2)
    val_loss = _mean_loss(points(VAL), w, b, P, np.repeat(n_split[:, VAL], K)).reshape(T, K)
    test_loss = _mean_loss(points(TEST), w, b, P, np.repeat(n_split[:, TEST], K)).reshape(T, K)
    w, b = w.reshape(T, K), b.reshape(T, K)
    for arr in (w, b, val_loss, test_loss):
        arr[~valid] = np.nan

    best = np.argmin(np.where(valid, val_loss, np.inf), axis=1) if T else np.zeros(0, np.int64)
    pick = (np.arange(T), best)
    table = pd.DataFrame({
        "task": np.array([s.task for s in splits], dtype=np.int64),
        "n_pos": np.array([s.n_pos for s in splits], dtype=np.int64),
        "n_train": n_split[:, TRAIN], "n_val": n_split[:, VAL], "n_test": n_split[:, TEST],
        "n_candidates": (candidates >= 0).sum(axis=1),
        "best_latent": candidates[pick],
        "weight": w[pick], "intercept": b[pick],
        "val_loss": val_loss[pick], "test_loss": test_loss[pick],
    })
    mean = float(table["test_loss"].mean()) if T else float("nan")
    return ProbeResult(table=table, mean_test_loss=mean, tasks=table["task"].to_numpy(),
                       candidates=candidates, weight=w, intercept=b, val_loss=val_loss,
                       test_loss=test_loss, splits=splits)
