"""Reading scans with their geometry, the training intensity rules, masks written back in place."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from lungseg.config import PreprocessConfig
from lungseg.data import formats, readers
from lungseg.errors import DataError
from lungseg.inference import volumes
from train_helpers import SAMPLE

MEDSEG = {"image_size": 32, "hu_window": [-1000.0, 400.0], "dataset": "medseg"}


def _mask_path(png):
    return SAMPLE / "tr_mask_new" / png.name.replace("tr_im", "tr_mask")


@pytest.fixture(scope="module")
def nifti_pair(tmp_path_factory, nifti_scan, sample_pngs):
    """``images/ct.nii.gz`` (the LPS-oriented sample volume) + ``masks/ct.nii.gz`` (its real masks)."""
    root = tmp_path_factory.mktemp("niftipair")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    shutil.copyfile(nifti_scan, root / "images" / "ct.nii.gz")
    img = nib.load(nifti_scan)
    masks = np.stack([np.asarray(Image.open(_mask_path(p))) for p in sample_pngs])  # (z, y, x)
    nib.save(nib.Nifti1Image(np.transpose(masks, (2, 1, 0)).astype(np.uint8), img.affine), root / "masks" / "ct.nii.gz")
    return root


def test_nifti_slices_and_intensity_are_the_training_readers(nifti_pair, nifti_zooms):
    """The model sees a NIfTI exactly as the training reader ``nifti`` cut and scaled it (orientation
    included: the file is LPS, the reader's view is radiological RAS)."""
    raw = list(readers.read_nifti(nifti_pair, PreprocessConfig()).slices)
    scan = volumes.read_scan(nifti_pair / "images" / "ct.nii.gz")
    ours, warnings = volumes.to_model_range(scan, MEDSEG)
    assert scan.kind == "nifti" and len(ours) == len(raw) == 6
    for r, o in zip(raw, ours):
        np.testing.assert_array_equal(o, r.image)
    # (slice, row, col): rows are anterior→posterior (y, 0.8 mm), columns right→left (x, 0.7 mm)
    assert scan.spacing == pytest.approx((nifti_zooms[2], nifti_zooms[1], nifti_zooms[0]))
    assert raw[0].spacing == pytest.approx(scan.spacing[1:])
    assert scan.voxel_ml == pytest.approx(0.7 * 0.8 * 2.5 / 1000)
    assert scan.columns_towards_left is True
    assert any("8-bit" in w for w in warnings)  # a MedSeg model given HU input is told


def test_nifti_masks_are_written_in_the_source_voxel_grid(nifti_pair, nifti_zooms, tmp_path):
    """Labels in the model's view written back land on the very voxels of the source file."""
    scan = volumes.read_scan(nifti_pair / "images" / "ct.nii.gz")
    view_masks = [r.mask for r in readers.read_nifti(nifti_pair, PreprocessConfig()).slices]
    (path,) = volumes.write_masks(scan, view_masks, tmp_path, "infection_mask")
    written, source = nib.load(path), nib.load(nifti_pair / "masks" / "ct.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(source.dataobj))
    np.testing.assert_allclose(written.affine, source.affine)
    assert written.get_data_dtype() == np.uint8 and written.header.get_zooms() == pytest.approx(nifti_zooms)


def test_dicom_fixture_reads_like_training_and_its_mask_is_accepted_by_the_training_reader(dicom_case, tmp_path):
    raw = list(readers.read_dicom(dicom_case.parent, PreprocessConfig()).slices)
    scan = volumes.read_scan(dicom_case / "image")
    ours, _ = volumes.to_model_range(scan, MEDSEG)
    assert scan.kind == "dicom" and len(ours) == 4
    for r, o in zip(raw, ours):
        np.testing.assert_array_equal(o, r.image)
    assert scan.spacing == pytest.approx((2.5, 0.7, 0.8))  # fixture: x 0.8, y 0.7, z 2.5 mm
    # write the reference masks as if predicted, then let the training reader check the geometry
    (path,) = volumes.write_masks(scan, [r.mask for r in raw], tmp_path / "out", "infection_mask")
    case = tmp_path / "cases" / "case1"
    shutil.copytree(dicom_case / "image", case / "image")
    shutil.copyfile(path, case / "mask.nii.gz")
    again = list(readers.read_dicom(tmp_path / "cases", PreprocessConfig()).slices)  # raises on any geometry mismatch
    for r, a in zip(raw, again):
        np.testing.assert_array_equal(a.mask, r.mask)


@pytest.mark.slow
def test_dicom_seg_references_the_source_slices(dicom_case, dicom_case_for_seg, tmp_path):
    import highdicom as hd
    import pydicom

    with pytest.raises(DataError, match="lacks FrameOfReferenceUID"):  # SimpleITK's writer leaves it out
        volumes.check_dicom_seg_source(volumes.read_scan(dicom_case / "image"))
    scan = volumes.read_scan(dicom_case_for_seg / "image")
    masks = [r.mask for r in readers.read_dicom(dicom_case_for_seg.parent, PreprocessConfig()).slices]
    path = volumes.write_dicom_seg(
        scan, masks, tmp_path / "seg.dcm", label_names=["background", "infection"], model_name="unet", version="test"
    )
    seg = hd.seg.segread(path)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in scan.geometry["series"].files]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0], np.stack(masks))
    assert seg.get_segment_description(1).segment_label == "infection"


def test_the_real_two_slice_series(lungmask_dicom):
    scan = volumes.read_scan(lungmask_dicom)
    assert scan.kind == "dicom" and len(scan.slices) == 2 and scan.slices[0].shape == (512, 512)
    assert scan.spacing == pytest.approx((1.0, 0.625, 0.625))
    assert scan.columns_towards_left is True  # row cosine (1, 0, 0): columns grow towards the patient's left
    assert any("README.md" in w for w in scan.warnings)  # the README beside the slices is left out, and said so
    assert float(scan.slices[0].min()) == -2048.0  # HU after the rescale (outside the field of view)
    with pytest.raises(DataError, match="lacks FrameOfReferenceUID, Modality"):
        volumes.check_dicom_seg_source(scan)


def test_png_slices_natural_order_intensity_and_given_spacing(tmp_path, sample_pngs):
    for i, p in enumerate(sample_pngs[:3]):
        shutil.copyfile(p, tmp_path / f"s{[10, 9, 100][i]}.png")
    scan = volumes.read_scan(tmp_path, spacing=(0.7, 0.8, 5.0))
    assert scan.names == ["s9", "s10", "s100"]
    assert scan.spacing == (5.0, 0.7, 0.8) and scan.voxel_ml == pytest.approx(0.7 * 0.8 * 5.0 / 1000)
    ours, _ = volumes.to_model_range(scan, MEDSEG)
    np.testing.assert_array_equal(ours[1], formats.read_image_2d(sample_pngs[0]).astype(np.float32) / 255.0)
    assert volumes.read_scan(tmp_path).spacing is None


def test_kaggle_models_get_per_image_minmax(lungmask_dicom):
    scan = volumes.read_scan(lungmask_dicom)
    ours, _ = volumes.to_model_range(scan, {"image_size": 32, "dataset": "kaggle-64", "hu_window": [-1000, 400]})
    s = scan.slices[1]
    np.testing.assert_allclose(ours[1], (s - s.min()) / (s.max() - s.min()), atol=1e-6)
    assert volumes.intensity_rule({"dataset": "kaggle-64"}) == "minmax"
    assert volumes.intensity_rule({"dataset": "dicom"}) == "window"


def test_spacing_rules(tmp_path, nifti_scan, lungmask_dicom):
    with pytest.raises(DataError, match="records its voxel size"):
        volumes.read_scan(nifti_scan, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="records its spacing"):
        volumes.read_scan(lungmask_dicom, spacing=(1.0, 1.0, 1.0))
    bare = tmp_path / "bare.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(nib.load(nifti_scan).dataobj), None), bare)
    with pytest.raises(DataError, match="no voxel spacing"):
        volumes.read_scan(bare)
    assert volumes.read_scan(bare, spacing=(0.7, 0.8, 2.5)).spacing == (2.5, 0.7, 0.8)
    assert volumes.read_scan(bare, require_spacing=False).spacing is None
    with pytest.raises(DataError, match="not a positive voxel size"):
        volumes.read_scan(bare, spacing=(0.0, 1.0, 1.0))
