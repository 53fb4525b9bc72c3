"""Confidence intervals of the evaluation's measures, through SciPy rather than by hand.

Every measure the report gives with an interval uses one of two:

* :func:`wilson_interval`: a share of successes (classifier accuracy, exact endings, pairwise wins),
  Wilson's score interval as :meth:`scipy.stats.binomtest.proportion_ci` computes it;
* :func:`bootstrap_interval`: any statistic of conversations (perplexity, Fréchet distance, ending F1,
  intent overlap, rounds), a percentile bootstrap by :func:`scipy.stats.bootstrap`. The statistic
  receives *indices* into the caller's records, so records of any shape (rows, embeddings, dicts) are
  resampled whole; two samples (real and simulated) are resampled independently of each other.

Percentile, not SciPy's default BCa: the report's intervals have always been percentile ones, and BCa
needs a jackknife over every record, which for a Fréchet distance over thousands of embeddings costs
more than the bootstrap itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# scipy.stats is imported inside the functions: it costs 1.3 s, and every `realchat` command imports this
# module through the step registry, curate and plan included, which never compute an interval.


def wilson_interval(successes: int, n: int) -> list[float]:
    """95 % Wilson score interval of ``successes / n``, rounded to 4 places; ``[0, 1]`` when n is 0."""
    if n == 0:
        return [0.0, 1.0]
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(float(ci.low), 4) + 0.0, round(float(ci.high), 4) + 0.0]  # + 0.0: no "-0.0"


def bootstrap_interval(statistic: Callable[..., float | np.ndarray], *sizes: int, resamples: int,
                       seed: int, recentre_on: float | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """95 % percentile bootstrap interval of ``statistic(idx_1, ..., idx_k)``, where each ``idx_i`` is
    a resample (with replacement) of ``range(sizes[i])``, drawn independently per sample.

    The statistic may return a vector (several measures over the same resample, e.g. precision,
    recall and F1); low and high come back with its shape. A sample of one record has one possible
    resample, so its interval is the statistic itself (SciPy refuses samples under two).

    ``recentre_on`` (the statistic on the whole samples): the resamples' distribution is shifted so
    its mean is that value before its percentiles are read. For a statistic that a resample inflates
    by itself, such as a Fréchet distance (a resample repeats records, which narrows its covariance
    and moves its mean away: the whole bootstrap distribution can sit above the estimate), the plain
    percentile interval can lie entirely above the figure it is printed beside; the shift removes
    that bootstrap bias and keeps the spread."""
    if min(sizes) < 2:
        point = np.asarray(statistic(*(np.arange(n) for n in sizes)), dtype=float)
        return point, point
    from scipy.stats import bootstrap

    data = tuple(np.arange(n) for n in sizes)
    result = bootstrap(data, statistic, n_resamples=resamples, paired=False, vectorized=False,
                       confidence_level=0.95, method="percentile", rng=np.random.default_rng(seed))
    low, high = np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)
    if recentre_on is not None:
        shift = np.mean(result.bootstrap_distribution, axis=-1) - recentre_on
        low, high = low - shift, high - shift
    return low, high
