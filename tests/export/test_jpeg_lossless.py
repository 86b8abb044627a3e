"""Lossless JPEG decodes through libjpeg-turbo first, to the values pylibjpeg gives, and falls
back to pylibjpeg whenever libjpeg-turbo cannot."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders import JPEGLosslessSV1Decoder
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import JPEGLosslessSV1

from ftlct.export import jpeg_lossless
from ftlct.export.preprocessing import PreprocessingError, dicom_slices, read_slices
from tests.agent.dicom_files import ct_instance
from tests.support.paths import CQ500, require


def _lossless_ct(rows: int = 64, columns: int = 48, seed: int = 0):
    """CT_small's header with a 12-bit JPEG Lossless SV1 frame of known values."""
    values = np.random.default_rng(seed).integers(0, 4096, (rows, columns)).astype(np.uint16)
    ds = ct_instance()
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    frame = imagecodecs.jpeg8_encode(values, lossless=True, predictor=1, bitspersample=12)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    return ds, values, frame


def _runner(ds) -> DecodeRunner:
    runner = DecodeRunner(JPEGLosslessSV1)
    runner.set_source(ds)
    return runner


def test_libjpeg_turbo_is_tried_first_and_decodes_what_pylibjpeg_decodes():
    assert jpeg_lossless.install()
    assert jpeg_lossless.install()  # idempotent
    assert list(JPEGLosslessSV1Decoder._available)[:2] == ["libjpeg-turbo", "pylibjpeg"]
    ds, values, _ = _lossless_ct()
    turbo = pydicom.pixels.pixel_array(ds, decoding_plugin="libjpeg-turbo")
    libjpeg = pydicom.pixels.pixel_array(ds, decoding_plugin="pylibjpeg")
    assert np.array_equal(turbo, values) and np.array_equal(libjpeg, values)
    (slice_,) = dicom_slices(ds)
    assert slice_.is_hu and np.array_equal(slice_.values, values.astype(np.float32) - 1024)


@pytest.mark.parametrize(
    "change, why",
    [
        ({"rows": 32}, "declares"),
        ({"bits_allocated": 8}, "declares"),
        ({"bits_allocated": 32}, "allocates 32"),
    ],
)
def test_a_frame_unlike_the_dataset_is_refused_by_the_plugin(change, why):
    ds, _, frame = _lossless_ct()
    runner = _runner(ds)
    assert len(jpeg_lossless.decode_frame(frame, runner)) == 64 * 48 * 2
    for name, value in change.items():
        runner.set_option(name, value)
    with pytest.raises(ValueError, match=why):
        jpeg_lossless.decode_frame(frame, runner)


def test_a_frame_header_announcing_a_huge_image_is_refused_before_it_is_allocated():
    ds, _, frame = _lossless_ct()
    forged = bytearray(frame)
    start = forged.find(b"\xff\xc3")  # SOF3: lossless, Huffman
    forged[start + 5 : start + 9] = (60000).to_bytes(2, "big") * 2  # lines, samples per line
    with pytest.raises(ValueError, match="declares"):
        jpeg_lossless.decode_frame(bytes(forged), _runner(ds))


def test_pylibjpeg_decodes_what_libjpeg_turbo_cannot(monkeypatch):
    ds, values, _ = _lossless_ct()

    def refuse(src, out=None):
        raise imagecodecs.Jpeg8Error("refused by the test")

    monkeypatch.setattr(jpeg_lossless, "_jpeg8_decode", lambda: refuse)
    (slice_,) = dicom_slices(ds)
    assert np.array_equal(slice_.values, values.astype(np.float32) - 1024)


def test_a_frame_neither_decoder_can_read_is_one_preprocessing_error():
    ds, _, frame = _lossless_ct()
    ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG stream " + bytes(len(frame) // 2)])
    with pytest.raises(PreprocessingError, match="cannot decode pixel data"):
        dicom_slices(ds)


def test_without_imagecodecs_the_plugin_is_unavailable(monkeypatch):
    monkeypatch.setattr(jpeg_lossless, "_jpeg8_decode", lambda: None)
    assert not jpeg_lossless.is_available(JPEGLosslessSV1)
    assert not jpeg_lossless.is_available("1.2.840.10008.1.2.4.50")  # baseline: not ours


def test_the_cq500_series_decodes_to_the_same_values_through_both_plugins():
    folder = require(CQ500)
    for path in sorted(folder.glob("*.dcm"))[1:240:40]:
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID != JPEGLosslessSV1:
            continue
        turbo = pydicom.pixels.pixel_array(ds, decoding_plugin="libjpeg-turbo")
        assert np.array_equal(turbo, pydicom.pixels.pixel_array(ds, decoding_plugin="pylibjpeg"))
        assert read_slices(path)[0].values.shape == turbo.shape
