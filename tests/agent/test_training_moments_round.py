"""A standardised FTL federation at the site: a moments round (the sums of the labelled
embeddings, clipped as announced, noised with DP on), then gradient rounds trained on
embeddings standardised by the announced fleet moments, sent as raw-space deltas."""

from __future__ import annotations

import numpy as np
import pytest

from ftlct.agent.settings import TrainingSettings
from ftlct.agent.sync.local_rounds import run_local_round
from ftlct.agent.training.recipe import RecipeRefused, recipe_for
from ftlct.export.closed_form_head import sensitivity
from ftlct.export.feature_moments import FeatureMoments, site_moments
from ftlct.export.head_onnx import numpy_head_logits
from tests.agent.federation_support import ScriptedCloud, site_with_embeddings, zero_head
from tests.agent.test_training_local_round import label, receive, settings_for
from tests.agent.test_training_statistics_round import queued_update, training_split

MOMENTS = {"update_kind": "moments", "max_embedding_norm": 2.0}


@pytest.fixture
def site(tmp_path):
    layout, records = site_with_embeddings(tmp_path / "agent", per_class=4, slices=3)
    return layout, records, ScriptedCloud(tmp_path / "cloud-keys")


def test_a_moments_round_sends_the_clipped_sums_of_the_training_slices_fp32(site):
    layout, records, cloud = site
    training = {**MOMENTS, "codec": "int8"}
    receive(layout, cloud, cloud.round(1, "v0", training=training), cloud.model("v0", zero_head()))
    label(layout, [(r.study_uid, r.label) for r in records])
    settings = settings_for(layout)
    outcome = run_local_round(settings, layout.root)
    assert outcome.trained, outcome.reason
    update = queued_update(layout)
    assert update.kind == "moments" and update.codec == "fp32"  # not the announced int8
    train, val = training_split(layout, settings)
    assert update.n_samples == len(train) == 18  # the held-out series stay out, as for a delta
    expected = site_moments(train.vectors, clip_norm=2.0).to_arrays()
    for name, value in expected.items():
        np.testing.assert_allclose(update.delta[name], value, rtol=1e-6, atol=1e-5)
    assert update.metrics["n_val"] == len(val) and "global_val_f1" in update.metrics


def test_with_dp_on_the_moments_are_noised_and_weighed_by_their_noised_count(site):
    layout, records, cloud = site
    receive(layout, cloud, cloud.round(1, "v0", training=MOMENTS), cloud.model("v0", zero_head()))
    label(layout, [(r.study_uid, r.label) for r in records])
    settings = settings_for(
        layout,
        **{
            "privacy.enabled": True,
            "privacy.noise_multiplier": 2.0,
            "privacy.statistics_clip_norm": 1.5,
            "privacy.epsilon_limit": 0.0,
        },
    )
    assert run_local_round(settings, layout.root).trained
    update = queued_update(layout)
    train, _ = training_split(layout, settings)
    exact = site_moments(train.vectors, clip_norm=1.5)  # the lower of the two bounds
    noised = FeatureMoments.from_arrays(update.delta)
    noise = np.concatenate([noised.total - exact.total, noised.total_sq - exact.total_sq])
    std = 2.0 * sensitivity(1.5)
    assert 0.4 * std < noise.std() < 1.8 * std
    assert update.metrics == {}  # nothing data-dependent beside the noised moments
    assert update.n_samples == max(1, round(noised.count))


def test_a_gradient_round_trains_on_standardised_embeddings_and_sends_a_raw_space_delta(site):
    layout, records, cloud = site
    rng = np.random.default_rng(3)
    mean = rng.normal(0, 1, 8).round(3)
    std = rng.uniform(0.5, 2.0, 8).round(3)
    training = {"feature_mean": mean.tolist(), "feature_std": std.tolist()}
    receive(layout, cloud, cloud.round(1, "v0", training=training), cloud.model("v0", zero_head()))
    label(layout, [(r.study_uid, r.label) for r in records])
    settings = settings_for(layout)
    assert run_local_round(settings, layout.root).trained
    update = queued_update(layout)
    assert update.kind == "delta"
    train, _ = training_split(layout, settings)
    # the delta is of a head on the raw embedding; the same round on pre-standardised vectors,
    # with the head mapped back, gives it
    from ftlct.agent.training.local_training import LocalTrainConfig, train_head

    t = settings.training
    config = LocalTrainConfig(
        epochs=t.epochs, lr=t.lr, batch_size=t.batch_size, weight_decay=t.weight_decay,
        seed=t.seed + 1, val_fraction=0.0,
    )  # fmt: skip
    expected = train_head(zero_head(), train.vectors, train.labels, 2, config, (mean, std))
    for name, value in expected.delta.items():
        np.testing.assert_allclose(update.delta[name], value, rtol=1e-3, atol=1e-4)
    head = {k: zero_head()[k] + update.delta[k] for k in update.delta}
    predicted = numpy_head_logits(head, train.vectors).argmax(axis=1)
    assert (predicted == train.labels).mean() == 1.0  # the separable classes, in raw space


@pytest.mark.parametrize(
    "announced, named",
    [
        ({"feature_mean": [0.0, 1.0]}, "feature_std"),
        ({"feature_mean": [0.0], "feature_std": [1.0, 1.0]}, "1 values, feature_std 2"),
        ({"feature_mean": [0.0, "x"], "feature_std": [1.0, 1.0]}, "not a finite number"),
        ({"feature_mean": [0.0, 1.0], "feature_std": [1.0, 0.0]}, "not above 0"),
        ({"feature_mean": "0,1", "feature_std": [1.0, 1.0]}, "must be a list"),
    ],
)
def test_malformed_announced_moments_are_refused_whatever_follow_round_says(announced, named):
    for follow in (True, False):
        with pytest.raises(RecipeRefused, match=named):
            recipe_for(TrainingSettings(follow_round=follow), announced)


def test_announced_moments_apply_even_when_the_site_keeps_its_own_recipe():
    recipe = recipe_for(
        TrainingSettings(follow_round=False), {"feature_mean": [1, 2], "feature_std": [3, 4]}
    )
    mean, std = recipe.standardisation
    np.testing.assert_array_equal(mean, [1, 2])
    np.testing.assert_array_equal(std, [3, 4])
    assert recipe_for(TrainingSettings(), {}).standardisation is None


def test_moments_of_another_width_than_the_head_fail_the_round_with_the_reason(site):
    layout, records, cloud = site
    training = {"feature_mean": [0.0] * 4, "feature_std": [1.0] * 4}  # the head takes 8
    receive(layout, cloud, cloud.round(1, "v0", training=training), cloud.model("v0", zero_head()))
    label(layout, [(r.study_uid, r.label) for r in records])
    outcome = run_local_round(settings_for(layout), layout.root)
    assert not outcome.trained and "standardisation of shapes (4,)" in outcome.reason
