"""AdaBN in the benchmark: every site embeds with its own adapted backbone."""

from __future__ import annotations

import numpy as np

from ftlct.bench.experiment import make_plan, prepare_views, run_method
from ftlct.bench.settings import BenchSettings
from ftlct.bench.site_adaptation import site_images


def test_each_site_adapts_to_its_scanner_and_embeds_with_it(
    image_folder, imagenet_weights, tmp_path
):
    settings = BenchSettings(
        data=str(image_folder),
        out=str(tmp_path),
        sites=3,
        rounds=2,
        methods="ftl,central",
        input_size=32,
        cache_dir=str(tmp_path / "cache"),
        threads=1,
    )
    settings.ftl.adabn = "early"
    settings.ftl.adabn_per_class = 3
    settings.check()
    plan = make_plan(settings, reporter=_Quiet())
    prepare_views(settings, plan, _Quiet())
    assert len(plan.site_stores) == 3
    for site, store in enumerate(plan.site_stores):
        record = store.model.manifest["backbone"]["adaptation"]
        assert record["scanner"] == plan.profiles[site].name
        assert record["up_to_stage"] == 6
        labels = plan.dataset.labels[site_images(settings, plan, site)]
        assert np.bincount(labels).max() <= 3  # balanced: at most adabn_per_class per label
        test = plan.partition.test
        adapted = store.get("embedding", site, test)
        assert not np.allclose(adapted, plan.store.get("embedding", site, test))
    from ftlct.bench.experiment import _sites

    for site, data in enumerate(_sites(plan, "embedding")):  # what the learners are handed
        expected = plan.site_stores[site].get("embedding", site, plan.partition.test)
        assert np.array_equal(data.test, expected)
    run = run_method("ftl", settings, plan, _Quiet())
    assert 0.0 <= run.final.f1 <= 1.0


class _Quiet:
    def stage(self, name, total):
        return lambda: None

    def note(self, text):
        pass
