"""The evaluation's intervals (realchat/evaluation/intervals.py) against the closed forms they estimate."""

import math

import numpy as np

from realchat.evaluation.fidelity import frechet_distance, perplexity_with_ci, rounds_comparison
from realchat.evaluation.intervals import bootstrap_interval, wilson_interval


def test_wilson_interval_is_the_closed_form():
    for k, n in [(3, 10), (0, 5), (5, 5), (438, 1000), (1, 2)]:
        p, z = k / n, 1.959963984540054
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert wilson_interval(k, n) == [round(centre - half, 4) + 0.0, round(centre + half, 4) + 0.0]
    assert wilson_interval(0, 0) == [0.0, 1.0]
    assert str(wilson_interval(0, 5)[0]) == "0.0"  # never "-0.0" in a report


def test_bootstrap_of_a_mean_matches_the_normal_interval():
    x = np.random.default_rng(1).normal(10.0, 2.0, 2000)
    lo, hi = bootstrap_interval(lambda i: x[i].mean(), len(x), resamples=2000, seed=0)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert abs(float(lo) - (x.mean() - half)) < 0.02 and abs(float(hi) - (x.mean() + half)) < 0.02


def test_two_samples_are_resampled_independently():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 1500), rng.normal(0.5, 3, 500)
    lo, hi = bootstrap_interval(lambda i, j: a[i].mean() - b[j].mean(), len(a), len(b), resamples=2000, seed=0)
    half = 1.96 * math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))  # Welch
    d = a.mean() - b.mean()
    assert abs(float(lo) - (d - half)) < 0.03 and abs(float(hi) - (d + half)) < 0.03


def test_vector_statistics_and_single_records():
    x = np.arange(50.0)
    lo, hi = bootstrap_interval(lambda i: np.array([x[i].min(), x[i].max()]), 50, resamples=300, seed=0)
    assert lo.shape == (2,) and lo[0] <= hi[0] <= 49 and hi[1] == 49
    lo, hi = bootstrap_interval(lambda i: x[i].sum(), 1, resamples=300, seed=0)
    assert float(lo) == float(hi) == 0.0
    one = perplexity_with_ci([(4.0, 2)], bootstrap=100)
    assert one["ci95"] == [round(math.exp(2.0), 3)] * 2


def test_measures_contain_their_point_and_are_reproducible():
    rng = np.random.default_rng(3)
    real, sim = rng.normal(0, 1, (300, 8)), rng.normal(0.3, 1, (200, 8))
    f = frechet_distance(real, sim, dims=8, bootstrap=200, seed=5)
    assert f["ci95"][0] <= f["distance"] <= f["ci95"][1] and f == frechet_distance(real, sim, dims=8, bootstrap=200, seed=5)
    rows = [(float(v), int(n)) for v, n in zip(rng.uniform(5, 50, 80), rng.integers(5, 30, 80))]
    p = perplexity_with_ci(rows, bootstrap=200)
    assert p["ci95"][0] <= p["perplexity"] <= p["ci95"][1]
    r = rounds_comparison([1, 2, 2, 3, 5, 1, 1], [1, 1, 1, 2, 8], bootstrap=200)
    assert 0 <= r["total_variation_ci95"][0] <= r["total_variation_ci95"][1] <= 1


def test_a_small_simulated_set_keeps_its_frechet_distance_inside_its_interval():
    """48 simulated turns against 300 real ones, as in the default build: a resample repeats turns,
    which by itself inflates the distance, so the plain percentile interval lies above the estimate;
    the re-centred one holds it and keeps the spread."""
    from realchat.evaluation.fidelity import _frechet, _pca_basis
    from realchat.evaluation.intervals import bootstrap_interval

    rng = np.random.default_rng(11)
    real, sim = rng.normal(0, 1, (300, 16)), rng.normal(0.15, 1, (48, 16))
    f = frechet_distance(real, sim, dims=16, bootstrap=200, seed=0)
    assert f["ci95"][0] <= f["distance"] <= f["ci95"][1], f
    mean, basis = _pca_basis(np.vstack([real, sim]), 16)
    r, s = (real - mean) @ basis, (sim - mean) @ basis
    lo, hi = bootstrap_interval(lambda i, j: _frechet(r[i], s[j]), len(r), len(s), resamples=200, seed=0)
    assert float(lo) > f["distance"]  # the plain percentile interval misses the figure it stands beside
    assert abs((float(hi) - float(lo)) - (f["ci95"][1] - f["ci95"][0])) < 0.05 * (float(hi) - float(lo)) + 1e-3
