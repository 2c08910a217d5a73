"""xsae.metrics.probes: 1-D logistic probes (SPARC §4.4 / A.3), checked against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from xsae.metrics.probes import (
    TEST,
    TRAIN,
    VAL,
    balanced_split,
    evaluate_1d_probes,
    fit_logistic_1d,
    fit_logistic_1d_counts,
    split_sizes,
    task_splits,
)
from xsae.sae import Codes


def softplus(z):
    return np.logaddexp(0.0, z)


def random_problem(seed=0, n=600, n_latents=64, k=8, prevalence=(0.2, 0.3, 0.45, 0.05)):
    """Codes [n, k] whose first latents co-fire with the labels, plus multi-hot labels [n, C]."""
    rng = np.random.default_rng(seed)
    labels = rng.random((n, len(prevalence))) < np.array(prevalence)
    # Sampling weights per row: latents 2c and 2c+1 prefer the rows of class c.
    pref = np.ones((n, n_latents))
    for c in range(len(prevalence)):
        pref[:, 2 * c:2 * c + 2] += 6.0 * labels[:, [c]]
    gumbel = np.log(pref) - np.log(-np.log(rng.random((n, n_latents))))
    indices = np.argsort(-gumbel, axis=1)[:, :k]
    values = rng.exponential(size=(n, k)) * (rng.random((n, k)) < 0.8)  # some selected but zero
    codes = Codes(torch.tensor(values, dtype=torch.float32), torch.tensor(indices))
    dense = codes.dense(n_latents).double().numpy()
    return codes, dense, labels


def sklearn_probe(x_train, y_train):
    model = LogisticRegression(C=1.0, solver="lbfgs", max_iter=200, tol=1e-8)
    return model.fit(x_train[:, None], y_train)


@pytest.mark.parametrize("binarize", [True, False])
def test_every_candidate_matches_sklearn(binarize):
    codes, dense, labels = random_problem()
    result = evaluate_1d_probes(codes, labels, n_latents=64, binarize=binarize)
    assert list(result.tasks) == [0, 1, 2]  # class 3 has ~30 positives
    features = (dense > 0).astype(np.float64) if binarize else dense
    for t, split in enumerate(result.splits):
        (tr, y_tr), (va, y_va), (te, y_te) = split.train, split.val, split.test
        assert (result.candidates[t] >= 0).all()
        sk_val = []
        for c, latent in enumerate(result.candidates[t]):
            model = sklearn_probe(features[tr, latent], y_tr)
            assert result.weight[t, c] == pytest.approx(model.coef_[0, 0], abs=1e-4)
            assert result.intercept[t, c] == pytest.approx(model.intercept_[0], abs=1e-4)
            p_va = model.predict_proba(features[va, latent][:, None])[:, 1]
            p_te = model.predict_proba(features[te, latent][:, None])[:, 1]
            assert result.val_loss[t, c] == pytest.approx(log_loss(y_va, p_va, labels=[0, 1]), abs=1e-4)
            assert result.test_loss[t, c] == pytest.approx(log_loss(y_te, p_te, labels=[0, 1]), abs=1e-4)
            sk_val.append(log_loss(y_va, p_va, labels=[0, 1]))
        row = result.table.iloc[t]
        best = int(np.argmin(result.val_loss[t]))
        assert row.best_latent == result.candidates[t, best]
        assert row.val_loss == pytest.approx(min(sk_val), abs=1e-4)
        assert row.test_loss == result.test_loss[t, best]
    assert result.mean_test_loss == pytest.approx(result.table.test_loss.mean(), abs=1e-15)
    assert result.mean_test_loss < math.log(2)


def test_input_formats_agree():
    codes, dense, labels = random_problem(seed=1)
    mask = np.random.default_rng(5).random(600) < 0.9
    for binarize in (True, False):
        ref = evaluate_1d_probes(codes, labels, n_latents=64, mask=mask, binarize=binarize)
        for other_codes, other_labels in [(dense, sp.csr_matrix(labels)), (torch.tensor(dense), labels),
                                          (sp.csr_matrix(dense), sp.csc_matrix(labels.astype(np.int8)))]:
            other = evaluate_1d_probes(other_codes, other_labels, n_latents=64, mask=mask, binarize=binarize)
            np.testing.assert_array_equal(other.candidates, ref.candidates)
            np.testing.assert_allclose(other.test_loss, ref.test_loss, rtol=0, atol=1e-12)
        # Small chunks (one task at a time) change nothing.
        chunked = evaluate_1d_probes(codes, labels, n_latents=64, mask=mask, binarize=binarize, chunk_rows=1)
        np.testing.assert_array_equal(chunked.candidates, ref.candidates)
        np.testing.assert_allclose(chunked.test_loss, ref.test_loss, rtol=0, atol=1e-12)


def test_mask_drops_unlabelled_rows():
    codes, _, labels = random_problem(seed=2)
    mask = np.ones(600, dtype=bool)
    mask[::3] = False
    result = evaluate_1d_probes(codes, labels, n_latents=64, mask=mask)
    for split in result.splits:
        assert mask[split.rows].all()
        assert split.n_pos == int((labels[:, split.task] & mask).sum())


def test_planted_latent_wins_with_the_regularised_optimum():
    _, dense, labels = random_problem(seed=3)
    task = 1
    dense = dense.copy()
    dense[:, 63] = labels[:, task] * 2.5  # latent 63 equals the label on every row
    result = evaluate_1d_probes(dense, labels, n_latents=64)
    row = result.table.set_index("task").loc[task]
    assert row.best_latent == 63
    # The best C=1 probe on the training counts, found independently.
    split = result.splits[list(result.tasks).index(task)]
    n_pos_train = int(split.train[1].sum())
    n_neg_train = split.train[1].size - n_pos_train
    objective = lambda p: (n_pos_train * softplus(-(p[0] + p[1])) + n_neg_train * softplus(p[1])  # noqa: E731
                           + 0.5 * p[0] ** 2)
    w, b = minimize(objective, [1.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
    assert row.weight == pytest.approx(w, abs=1e-6)
    assert row.intercept == pytest.approx(b, abs=1e-6)
    y_te = split.test[1]
    optimum = np.mean(np.where(y_te, softplus(-(w + b)), softplus(b)))
    assert row.test_loss == pytest.approx(optimum, abs=1e-6)
    assert row.test_loss < 0.15  # far below log 2, but not 0: the penalty keeps w finite


def test_task_filter_is_at_least_min_positives():
    rng = np.random.default_rng(4)
    labels = np.zeros((400, 3), dtype=bool)
    labels[rng.choice(400, 49, replace=False), 0] = True
    labels[rng.choice(400, 50, replace=False), 1] = True
    labels[rng.choice(400, 120, replace=False), 2] = True
    codes = rng.random((400, 16)) * (rng.random((400, 16)) < 0.3)
    assert list(evaluate_1d_probes(codes, labels, n_latents=16).table.task) == [1, 2]
    assert list(evaluate_1d_probes(codes, labels, n_latents=16, min_positives=49).table.task) == [0, 1, 2]
    assert list(evaluate_1d_probes(codes, labels, n_latents=16, min_positives=51).table.task) == [2]


def test_balancing_and_split_sizes_are_exact():
    positives = np.arange(0, 200, 2)  # m = 100
    negatives = np.arange(1, 1000, 2)
    split = balanced_split(positives, negatives, task=7)
    assert split.rows.size == 200 and split.y.sum() == 100
    np.testing.assert_array_equal(split.rows[split.y], positives)  # every positive is kept
    drawn = split.rows[~split.y]
    assert np.unique(drawn).size == 100 and np.isin(drawn, negatives).all()
    expected = np.sort(np.random.default_rng(1000 + 7).choice(negatives, 100, replace=False))
    np.testing.assert_array_equal(drawn, expected)
    for which, size in ((TRAIN, 70), (VAL, 15), (TEST, 15)):
        rows, y = split.part(which)
        assert rows.size == 2 * size and y.sum() == size  # 70/15/15 of each class
    assert np.unique(split.rows).size == 200  # splits are disjoint
    assert split_sizes(100) == (70, 15, 15)
    assert split_sizes(57) == (40, 8, 9)
    for m in range(6, 300):
        n_train, n_val, n_test = split_sizes(m)
        assert n_train + n_val + n_test == m and abs(10 * n_train - 7 * m) <= 5 and n_val >= 1
        assert 0 <= n_test - n_val <= 1
    # More positives than negatives: the positives are drawn down instead.
    flipped = balanced_split(negatives, positives, task=7)
    assert flipped.y.sum() == 100 and (~flipped.y).sum() == 100 and flipped.n_pos == 500
    assert balanced_split(np.arange(5), np.arange(5, 50), task=0) is None  # m < 6: no split possible


def test_seeds_make_it_reproducible():
    codes, _, labels = random_problem(seed=6)
    a = evaluate_1d_probes(codes, labels, n_latents=64)
    b = evaluate_1d_probes(codes, labels, n_latents=64)
    assert a.table.equals(b.table)
    for sa, sb in zip(a.splits, b.splits, strict=True):
        np.testing.assert_array_equal(sa.rows, sb.rows)
        np.testing.assert_array_equal(sa.split, sb.split)
    # The seeds depend on the task id: the same class under another id is split differently.
    s0 = balanced_split(np.arange(100), np.arange(100, 600), task=0)
    s1 = balanced_split(np.arange(100), np.arange(100, 600), task=1)
    assert not np.array_equal(s0.rows, s1.rows) and not np.array_equal(s0.split[:100], s1.split[:100])


def test_candidates_are_ranked_on_training_rows_only():
    rng = np.random.default_rng(7)
    n, n_latents = 500, 40
    labels = np.zeros((n, 1), dtype=bool)
    labels[:120, 0] = True
    codes = rng.random((n, n_latents)) * (rng.random((n, n_latents)) < 0.06)
    codes[:, 39] = 0.0
    (split,) = task_splits(labels)
    test_rows, test_y = split.test
    train_rows, train_y = split.train
    codes[test_rows[test_y], 39] = 1.0  # active on every test positive ...
    codes[train_rows[~train_y][:3], 39] = 1.0  # ... and on a few training negatives only
    result = evaluate_1d_probes(codes, labels, n_latents=n_latents)
    assert 39 not in result.candidates[0]
    # Ranked on all positive rows (the reference's leak), latent 39 would come first.
    assert np.argmax((codes[split.rows[split.y]] > 0).sum(axis=0)) == 39
    # Ranked on positive training rows: counts, then the lower index.
    counts = (codes[train_rows[train_y]] > 0).sum(axis=0)
    expected = sorted(range(n_latents), key=lambda j: (-counts[j], j))[:20]
    assert list(result.candidates[0]) == expected


def test_latent_inactive_on_training_rows_is_never_a_candidate():
    rng = np.random.default_rng(8)
    n, n_latents = 400, 16
    labels = np.zeros((n, 1), dtype=bool)
    labels[rng.choice(n, 100, replace=False), 0] = True
    codes = np.zeros((n, n_latents))
    codes[:, :5] = rng.random((n, 5)) * (rng.random((n, 5)) < 0.3)
    (split,) = task_splits(labels)
    codes[split.rows[split.split != TRAIN], 15] = 3.0  # every validation and test row
    for binarize in (True, False):
        result = evaluate_1d_probes(codes, labels, n_latents=n_latents, binarize=binarize)
        cand = result.candidates[0]
        assert 15 not in cand
        counts = (codes[split.train[0][split.train[1]]] > 0).sum(axis=0)
        assert list(cand[:5]) == sorted(range(5), key=lambda j: (-counts[j], j))
        assert (cand[5:] == -1).all() and np.isnan(result.test_loss[0, 5:]).all()
        assert result.table.n_candidates[0] == 5


def test_latents_firing_on_training_negatives_only_follow_by_index():
    """Fewer than K latents fire on the positive training rows: the rest of the K are the latents
    that fire on training negatives only, lowest index first; a latent firing on no training row
    is never one."""
    n, n_latents = 300, 16
    labels = np.zeros((n, 1), dtype=bool)
    labels[::3, 0] = True
    (split,) = task_splits(labels)
    (train_rows, train_y), (val_rows, _) = split.train, split.val
    codes = np.zeros((n, n_latents))
    positives, negatives = train_rows[train_y], train_rows[~train_y]
    codes[positives[:30], 5] = 1.0
    codes[positives[:10], 2] = 1.0
    codes[negatives[:4], 12] = 1.0
    codes[negatives[4:6], 9] = 1.0
    codes[val_rows, 11] = 1.0  # fires, but on no training row
    result = evaluate_1d_probes(codes, labels, n_latents=n_latents, n_candidates=6)
    assert list(result.candidates[0]) == [5, 2, 9, 12, -1, -1]


@pytest.mark.parametrize("binarize", [True, False])
def test_the_feature_table_budget_changes_nothing(binarize):
    """One task's candidates per table (the smallest budget) or all tasks' at once: same numbers."""
    codes, _, labels = random_problem(seed=3, n=900)
    whole = evaluate_1d_probes(codes, labels, n_latents=64, min_positives=20, binarize=binarize)
    split = evaluate_1d_probes(codes, labels, n_latents=64, min_positives=20, binarize=binarize,
                               table_bytes=1)
    assert len(whole.table) >= 3
    np.testing.assert_array_equal(whole.candidates, split.candidates)
    np.testing.assert_array_equal(whole.test_loss, split.test_loss)
    np.testing.assert_array_equal(whole.val_loss, split.val_loss)


@pytest.mark.parametrize("binarize", [True, False])
def test_no_active_latent_gives_log2(binarize):
    rng = np.random.default_rng(9)
    labels = rng.random((400, 2)) < 0.3
    codes = Codes(torch.zeros(400, 4), torch.tensor(rng.integers(0, 32, (400, 4))))
    result = evaluate_1d_probes(codes, labels, n_latents=32, binarize=binarize)
    assert len(result.table) == 2
    assert (result.table.best_latent == -1).all() and (result.table.n_candidates == 0).all()
    assert (result.table.weight == 0).all() and np.allclose(result.table.intercept, 0, atol=1e-15)
    np.testing.assert_allclose(result.table.test_loss, math.log(2), rtol=0, atol=1e-12)
    assert result.mean_test_loss == pytest.approx(math.log(2), abs=1e-12)


def test_batched_fit_is_the_exact_minimiser():
    rng = np.random.default_rng(10)
    counts = rng.integers(0, 80, size=(4, 30))
    counts[:, 0] = [70, 0, 0, 70]  # separable: the penalty alone bounds w
    counts[:, 1] = [0, 0, 40, 25]  # feature never active: w = 0, b = log(40/25)
    counts[:, 2] = [33, 12, 0, 0]  # feature always active
    w, b = fit_logistic_1d_counts(*counts, C=0.5)
    for j in range(counts.shape[1]):
        a1, c1, a0, c0 = counts[:, j]
        f = lambda p, a1=a1, c1=c1, a0=a0, c0=c0: (  # noqa: E731
            a1 * softplus(-(p[0] + p[1])) + c1 * softplus(p[0] + p[1]) + a0 * softplus(-p[1])
            + c0 * softplus(p[1]) + p[0] ** 2)
        ref = minimize(f, [0.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
        np.testing.assert_allclose([w[j], b[j]], ref, atol=1e-6)
    assert w[1] == 0 and b[1] == pytest.approx(math.log(40 / 25), abs=1e-12)
    # Real-valued points, including a problem with no points, against scikit-learn.
    problem = np.repeat([0, 2, 3], [50, 80, 30])
    x = rng.normal(size=problem.size) * 3
    y = (rng.random(problem.size) < 1 / (1 + np.exp(-x))).astype(float)
    w, b = fit_logistic_1d(problem, x, y, n_problems=4)
    assert w[1] == 0 and b[1] == 0
    for p in (0, 2, 3):
        model = sklearn_probe(x[problem == p], y[problem == p])
        assert w[p] == pytest.approx(model.coef_[0, 0], abs=1e-5)
        assert b[p] == pytest.approx(model.intercept_[0], abs=1e-5)
    # Large, separable features (long damped steps at first): the optimality conditions hold.
    x = np.concatenate([rng.normal(size=200) * 50, rng.exponential(size=200) * 20])
    y = np.concatenate([x[:200] > 3, rng.random(200) < 0.5]).astype(float)
    problem = np.repeat([0, 1], 200)
    w, b = fit_logistic_1d(problem, x, y, C=2.0)
    for p in (0, 1):
        sel = problem == p
        residual = 1 / (1 + np.exp(-(w[p] * x[sel] + b[p]))) - y[sel]
        assert abs(residual @ x[sel] + w[p] / 2.0) < 1e-9 and abs(residual.sum()) < 1e-9
    assert w[0] > 0.5  # separable: only the penalty holds w back


def test_fitting_problems_together_equals_fitting_each_alone():
    """Problems converge at different iterations and the converged ones' points are left behind:
    every problem's fit is still bitwise the one it gets alone."""
    rng = np.random.default_rng(11)
    n_problems, n = 12, 3000
    problem = rng.integers(0, n_problems, n)
    x = rng.exponential(size=n) * (rng.random(n) < 0.7) * rng.integers(1, 6, n_problems)[problem]
    y = (rng.random(n) < rng.uniform(0.05, 0.95, n_problems)[problem]).astype(float)
    w, b = fit_logistic_1d(problem, x, y, n_problems=n_problems)
    for p in range(n_problems):
        mine = problem == p
        w_alone, b_alone = fit_logistic_1d(np.zeros(mine.sum(), np.int64), x[mine], y[mine], n_problems=1)
        assert (w[p], b[p]) == (w_alone[0], b_alone[0])
