"""The closed-form head: statistics add up exactly, the solvers match their textbook forms, DP noise."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.export.closed_form_head import (
    CLASS_COUNTS,
    GRAM,
    HeadStatistics,
    StatisticsError,
    privatise,
    project_head,
    random_projection,
    rho_of_release,
    sensitivity,
    site_statistics,
    solve_head,
    statistics_bytes,
)
from ftlct.export.head_onnx import numpy_head_logits


def gaussian_classes(n_per_class=(60, 40, 50), dim=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.0, (len(n_per_class), dim))
    x = np.concatenate(
        [rng.normal(c, 1.0, (n, dim)) for c, n in zip(centres, n_per_class, strict=True)]
    )
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    return x.astype(np.float32), y


def test_site_statistics_add_up_to_the_pooled_ones_however_labels_are_spread():
    x, y = gaussian_classes()
    order = np.argsort(y, kind="stable")  # pure label skew: each site holds one class
    sites = np.array_split(order, 3)
    total = sum(
        (site_statistics(x[s], y[s], 3) for s in sites[1:]),
        site_statistics(x[sites[0]], y[sites[0]], 3),
    )
    pooled = site_statistics(x, y, 3)
    assert np.allclose(total.gram, pooled.gram)
    assert np.allclose(total.class_sums, pooled.class_sums)
    assert total.class_counts.tolist() == [60, 40, 50]
    for solver in ("discriminant", "ridge"):
        a, b = solve_head(total, solver), solve_head(pooled, solver)
        assert np.allclose(a["dense.0.weight"], b["dense.0.weight"], atol=1e-5)


def test_discriminant_head_is_textbook_lda_with_equal_priors():
    x, y = gaussian_classes(dim=4)
    head = solve_head(site_statistics(x, y, 3), "discriminant", shrinkage=1e-9)
    means = np.stack([x[y == c].mean(0) for c in range(3)]).astype(np.float64)
    residual = x - means[y]
    cov = residual.T.astype(np.float64) @ residual / (len(x) - 3)
    w = np.linalg.solve(cov, means.T).T
    b = -0.5 * np.einsum("cd,cd->c", w, means)
    expected = x @ w.T + b
    got = numpy_head_logits(head, x)
    # logits may differ by a per-sample constant only: compare differences between classes
    assert np.allclose(got - got[:, :1], expected - expected[:, :1], atol=1e-3)
    assert (got.argmax(1) == y).mean() > 0.9


def test_ridge_head_is_least_squares_to_one_hot_targets():
    x, y = gaussian_classes(dim=3)
    lam = 0.3
    head = solve_head(site_statistics(x, y, 3), "ridge", shrinkage=lam)
    xd = x.astype(np.float64)
    within = np.concatenate([xd[y == c] - xd[y == c].mean(0) for c in range(3)])
    scale = 1.0 / np.sqrt((within**2).sum(0) / (len(x) - 3))
    z = (xd - xd.mean(0)) * scale
    targets = np.eye(3)[y] - np.eye(3)[y].mean(0)
    coef = np.linalg.solve(z.T @ z / len(x) + lam * np.eye(3), z.T @ targets / len(x))
    expected = z @ coef + np.eye(3)[y].mean(0)
    assert np.allclose(numpy_head_logits(head, x), expected, atol=1e-4)


def test_a_class_nobody_labelled_never_wins():
    x, y = gaussian_classes(n_per_class=(30, 30, 0))
    head = solve_head(site_statistics(x, y, 3))
    assert (numpy_head_logits(head, x).argmax(1) != 2).all()


def test_one_class_only_cannot_be_solved():
    x, y = gaussian_classes(n_per_class=(30, 0, 0))
    with pytest.raises(StatisticsError, match="fewer than two classes"):
        solve_head(site_statistics(x, y, 3))


def test_wire_form_round_trips_and_carries_the_triangle_only():
    x, y = gaussian_classes(dim=5)
    stats = site_statistics(x, y, 3)
    arrays = stats.to_arrays()
    assert arrays[GRAM].shape == (15,)
    back = HeadStatistics.from_arrays(arrays)
    assert np.allclose(back.gram, stats.gram, rtol=1e-6)
    assert statistics_bytes(5, 3) == 4 * (15 + 15 + 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop(GRAM), "need tensors"),
        (lambda a: a.update({GRAM: np.zeros(7, np.float32)}), "Gram triangle"),
        (lambda a: a.update({CLASS_COUNTS: np.zeros(2, np.float32)}), "do not fit"),
        (lambda a: a[GRAM].__setitem__(0, np.nan), "non-finite"),
    ],
)
def test_malformed_statistics_are_refused(change, message):
    x, y = gaussian_classes(dim=5)
    arrays = site_statistics(x, y, 3).to_arrays()
    change(arrays)
    with pytest.raises(StatisticsError, match=message):
        HeadStatistics.from_arrays(arrays)


def test_clipping_bounds_every_embedding_and_noise_has_the_promised_spread():
    x, y = gaussian_classes(dim=8)
    clipped = site_statistics(x * 10, y, 3, clip_norm=2.0)
    assert np.trace(clipped.gram) <= len(x) * 4.0 + 1e-6
    noisy = privatise(clipped, 2.0, 3.0, np.random.default_rng(1))
    noise = (noisy.gram - clipped.gram)[np.triu_indices(8)]
    assert np.allclose(noisy.gram, noisy.gram.T)
    assert np.std(noise) == pytest.approx(3.0 * sensitivity(2.0), rel=0.25)
    assert sensitivity(2.0) == pytest.approx(np.sqrt(16 + 4 + 1))
    assert rho_of_release(3.0) == pytest.approx(1 / 18)
    with pytest.raises(ValueError):
        privatise(clipped, 0.0, 1.0, np.random.default_rng(0))


def test_a_head_solved_on_projected_features_works_on_the_originals():
    x, y = gaussian_classes(dim=20)
    projection = random_projection(20, 8, seed=4)
    assert np.array_equal(projection, random_projection(20, 8, seed=4))
    head = solve_head(site_statistics(x @ projection.T, y, 3))
    mapped = project_head(head, projection)
    assert mapped["dense.0.weight"].shape == (3, 20)
    assert np.allclose(
        numpy_head_logits(mapped, x), numpy_head_logits(head, x @ projection.T), atol=1e-3
    )
