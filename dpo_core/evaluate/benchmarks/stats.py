"""Statistics for comparing models: paired bootstrap intervals and length-controlled win rates."""

from __future__ import annotations

import numpy as np


def paired_bootstrap(challenger: list[float], baseline: list[float], resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean per-item difference (challenger - baseline) with a percentile bootstrap interval that
    resamples items, keeping each item's pair together."""
    a, b = np.asarray(challenger, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two equally long, non-empty score lists, got {a.size} and {b.size}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    return {"mean_diff": float(diff.mean()), "ci_low": float(np.quantile(means, tail)),
            "ci_high": float(np.quantile(means, 1 - tail)), "n": int(diff.size)}


def win_rate(outcomes: list[float]) -> float:
    """Share of wins with ties counted half: outcomes are 1 (win), 0.5 (tie), 0 (loss)."""
    return float(np.mean(outcomes))


def length_controlled_win_rate(outcomes: list[float], length_diffs: list[float]) -> float:
    """AlpacaEval 2's idea: fit P(win) = sigmoid(w0 + w1 * length_diff) by logistic regression
    (a tie is half a win and half a loss) and report the fit at zero length difference, i.e. the
    win rate had both answers been equally long. Length differences are in characters / 1000."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(outcomes, dtype=float)
    x = np.asarray(length_diffs, dtype=float).reshape(-1, 1) / 1000.0
    if np.all(y == y[0]) and y[0] in (0.0, 1.0):
        return float(y[0])  # all wins or all losses: the fit is degenerate, the answer is not
    xs = np.concatenate([x, x])
    ys = np.concatenate([np.ones_like(y), np.zeros_like(y)])
    weights = np.concatenate([y, 1 - y])
    keep = weights > 0
    model = LogisticRegression(C=1e6).fit(xs[keep], ys[keep], sample_weight=weights[keep])
    return float(1 / (1 + np.exp(-model.intercept_[0])))
