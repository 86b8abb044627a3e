"""The twin's scanner profile: device header fields indexed at store time, aggregated per series."""

from __future__ import annotations

import pytest

from ftlct.agent.series.series_index import SeriesIndex
from ftlct.agent.store.database import Database
from ftlct.agent.store.disk import DiskGuard
from ftlct.agent.store.header import read_header
from ftlct.agent.store.instance_store import InstanceStore
from ftlct.agent.store.layout import DataDir
from ftlct.agent.twin.scanner_profile import plain, scanner_profile
from ftlct.protocol.twin_state import validate_twin_state
from tests.agent.dicom_files import ct_instance, part10_bytes


def _series(store, n, **device):
    series_uid, study_uid = None, None
    for k in range(n):
        ds = ct_instance(series_uid, study_uid, instance_number=k + 1)
        series_uid, study_uid = ds.SeriesInstanceUID, ds.StudyInstanceUID
        for key, value in device.items():
            setattr(ds, key, value)
        assert store.put(part10_bytes(ds)).ok


def test_device_fields_are_read_from_the_header():
    ds = ct_instance()
    ds.Manufacturer, ds.ManufacturerModelName, ds.KVP = "SIEMENS", "SOMATOM", "120"
    ds.ConvolutionKernel = ["Hr40f", "3"]
    ds.SliceThickness = "0.625"
    header = read_header(part10_bytes(ds))
    assert (header.manufacturer, header.model_name, header.kvp) == ("SIEMENS", "SOMATOM", 120.0)
    assert header.kernel == "Hr40f/3" and header.slice_thickness_mm == pytest.approx(0.625)
    bare = read_header(part10_bytes(ct_instance()))
    assert bare.kernel is None or isinstance(bare.kernel, str)  # optional: absent is fine


def test_the_profile_counts_series_per_device_and_takes_medians(tmp_path):
    layout = DataDir(tmp_path / "agent").create()
    db = Database(layout.index)
    store = InstanceStore(layout, db, DiskGuard(lambda: 10**15, 0), series=SeriesIndex(db))
    _series(
        store,
        3,
        Manufacturer="SIEMENS",
        ManufacturerModelName="SOMATOM",
        ConvolutionKernel="B30f",
        KVP=120,
        SliceThickness=5,
    )
    _series(
        store,
        5,
        Manufacturer="SIEMENS",
        ManufacturerModelName="SOMATOM",
        ConvolutionKernel="B70f",
        KVP=100,
        SliceThickness=1,
    )
    _series(
        store,
        1,
        Manufacturer="GE <Healthcare>;",
        ManufacturerModelName="Revolution",
        ConvolutionKernel="BONE",
        KVP=140,
        SliceThickness=2.5,
    )
    profile = scanner_profile(SeriesIndex(db))
    db.close()
    assert profile.manufacturers == {"SIEMENS": 2, "GE _Healthcare": 1}
    assert profile.manufacturer == "SIEMENS" and profile.model_name == "SOMATOM"
    assert profile.kernels == {"B30f": 1, "B70f": 1, "BONE": 1}
    assert profile.median_kvp == 120.0 and profile.median_slice_thickness_mm == 2.5
    assert profile.median_slices_per_series == 3.0 and profile.modalities == {"CT": 3}
    assert profile.series_per_day == 3.0
    # what the twin sends passes the closed schema
    validate_twin_state({"scanner": {**profile.__dict__}})


def test_names_are_folded_to_the_twin_character_set():
    assert plain("  Philips ;Brilliance\x00 ") == "Philips _Brilliance"
    assert plain("^^^") == "" and plain(None) == ""
    assert len(plain("x" * 100)) == 64
