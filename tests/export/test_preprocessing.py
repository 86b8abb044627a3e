import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ftlct.export.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessingError,
    PreprocessingSpec,
    Slice,
    Window,
    channels,
    dicom_slices,
    parse_windows,
    preprocess_file,
    read_slices,
    to_model_input,
)
from tests.support.paths import CQ500, require


def _ct_dataset(pixels, slope=1.0, intercept=-1024.0, photometric="MONOCHROME2"):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def test_window_maps_center_to_half_and_clips():
    window = Window("soft", 40.0, 400.0)
    values = window.apply(np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0]))
    assert np.allclose(values, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_dicom_rescale_gives_hounsfield_units():
    pixels = np.array([[0, 1024], [1064, 2024]])
    (slice_,) = dicom_slices(_ct_dataset(pixels))
    assert slice_.is_hu
    assert np.allclose(slice_.values, [[-1024, 0], [40, 1000]])


def test_monochrome1_does_not_change_hounsfield_units():
    pixels = np.array([[0, 1024], [1064, 2024]])
    (slice_,) = dicom_slices(_ct_dataset(pixels, photometric="MONOCHROME1"))
    assert np.allclose(slice_.values, [[-1024, 0], [40, 1000]])


def test_enhanced_ct_uses_per_frame_rescale():
    ds = _ct_dataset(np.stack([np.full((4, 4), 100), np.full((4, 4), 100)]))
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.NumberOfFrames = 2
    frames = []
    for intercept in (-1000.0, 0.0):
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = 1.0, intercept
        item = Dataset()
        item.PixelValueTransformationSequence = [transform]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    slices = dicom_slices(ds)
    assert [float(s.values.mean()) for s in slices] == [-900.0, 100.0]


def test_eight_bit_picture_skips_hu_and_uses_grey_levels(tmp_path):
    path = tmp_path / "slice.png"
    Image.fromarray(np.array([[0, 255], [128, 64]], dtype=np.uint8)).save(path)
    (slice_,) = read_slices(path)
    assert not slice_.is_hu
    assert slice_.values.max() == pytest.approx(1.0)


def test_rgba_jpeg_and_png_become_one_grey_slice(tmp_path):
    path = tmp_path / "colour.png"
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(path)
    batch = preprocess_file(path, PreprocessingSpec(input_size=32))
    assert batch.shape == (1, 3, 32, 32)
    assert batch.dtype == np.float32


def test_normalised_output_uses_imagenet_statistics():
    spec = PreprocessingSpec(input_size=32)
    white = Slice(np.ones((64, 64)), is_hu=False)
    batch = to_model_input([white], spec)
    expected = (1.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert np.allclose(batch[0, :, 5, 5], expected, atol=1e-5)


def test_three_windows_give_three_different_channels():
    spec = PreprocessingSpec(input_size=32)
    hu = Slice(np.linspace(-1000, 1500, 64 * 64).reshape(64, 64), is_hu=True)
    chw = channels(hu, spec)
    assert chw.shape == (3, 32, 32)
    assert not np.allclose(chw[0], chw[1]) and not np.allclose(chw[1], chw[2])


def test_spec_round_trips_through_json():
    spec = PreprocessingSpec(
        input_size=160, windows=parse_windows("brain:40:80,sub:80:200,bone:600:2800")
    )
    assert PreprocessingSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("text", ["a:1", "a:x:10", "a:1:0", "a:1:2,b:1:2"])
def test_bad_window_text_is_refused(text):
    with pytest.raises(PreprocessingError):
        PreprocessingSpec(windows=parse_windows(text))


def test_file_that_is_neither_dicom_nor_image_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(PreprocessingError, match="not a DICOM file nor a readable image"):
        read_slices(path)


def test_dataset_without_pixels_is_refused():
    ds = _ct_dataset(np.zeros((2, 2)))
    del ds.PixelData
    with pytest.raises(PreprocessingError, match="no pixel data"):
        dicom_slices(ds)


def test_real_cq500_jpeg_lossless_slice_decodes_to_plausible_hu():
    path = require(CQ500 / "CT000100.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    (slice_,) = read_slices(path)
    assert slice_.is_hu and slice_.values.shape == (512, 512)
    assert slice_.values.min() <= -900  # air around the head
    assert slice_.values.max() >= 700  # skull
