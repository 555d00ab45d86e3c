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


# ------------------------------------------------------------------------- the intensity contract (#21)
def _medseg_slices(sample_pngs, n=3) -> np.ndarray:
    """(z, y, x) uint8: real MedSeg slices as their authors windowed them."""
    return np.stack([np.asarray(Image.open(p)) for p in sample_pngs[:n]])


def _save_nifti(path, zyx: np.ndarray, *, geometry: bool = True):
    """A NIfTI of (z, y, x) data stored as its own dtype; ``geometry``: a RAS affine (0.7, 0.8, 2.5 mm)."""
    vol = np.ascontiguousarray(np.transpose(zyx, (2, 1, 0)))
    img = nib.Nifti1Image(vol, np.diag([0.7, 0.8, 2.5, 1.0]) if geometry else None)
    img.set_data_dtype(vol.dtype)
    nib.save(img, path)
    return path


def test_a_uint8_nifti_is_read_as_grey_levels_not_as_hu(tmp_path, sample_pngs):
    """A uint8 NIfTI of MedSeg slices was HU-windowed: the model saw [0.740, 0.893] instead of [0.141, 0.981]
    (281.1 mL as int16 HU vs 6.3 mL as uint8 for the same 8 slices)."""
    grey = _medseg_slices(sample_pngs)
    scan = volumes.read_scan(_save_nifti(tmp_path / "u8.nii.gz", grey))
    assert scan.intensity.domain == "uint8" and "stored as uint8" in scan.intensity.decided_by
    ours, warnings = volumes.to_model_range(scan, MEDSEG)
    seen = np.stack(ours)
    # exactly grey / 255, in the radiological view (rows A→P, columns R→L of a RAS file: both flipped)
    np.testing.assert_array_equal(seen, np.flip(grey, axis=(1, 2)).astype(np.float32) / np.float32(255.0))
    assert seen.min() == pytest.approx(grey.min() / 255) and seen.max() == pytest.approx(grey.max() / 255)
    assert not any("HU input" in w for w in warnings)  # the MedSeg model is not told it got HU
    assert volumes.conversion(scan, MEDSEG) == "grey level / 255"
    assert "8-bit slices windowed by the dataset's authors" in volumes.trained_on(MEDSEG)
    # the same slices in HU (the inverse of the default window) give the same model input up to rounding
    hu = (grey.astype(np.float32) / 255.0) * 1400.0 - 1000.0
    hu_scan = volumes.read_scan(_save_nifti(tmp_path / "hu.nii.gz", hu.astype(np.int16)))
    assert hu_scan.intensity.domain == "hu"
    np.testing.assert_allclose(np.stack(volumes.to_model_range(hu_scan, MEDSEG)[0]), seen, atol=1.0 / 1400 + 1e-6)
    # an HU-trained model given 8-bit data is told so
    assert any(
        "uint8 data, already windowed" in w for w in volumes.to_model_range(scan, {**MEDSEG, "dataset": "dicom"})[1]
    )


def test_an_ambiguous_nifti_is_refused_until_its_domain_is_stated(tmp_path, sample_pngs):
    grey = _medseg_slices(sample_pngs).astype(np.int16)  # 8-bit grey levels stored as int16: 0..255
    path = _save_nifti(tmp_path / "wide.nii.gz", grey)
    with pytest.raises(
        DataError, match=r"wide\.nii\.gz: cannot tell the intensity domain \(stored as int16.*--intensity"
    ):
        volumes.read_scan(path)
    stated = volumes.read_scan(path, intensity="uint8")
    assert stated.intensity.domain == "uint8" and stated.intensity.decided_by.startswith("--intensity uint8")
    u8 = volumes.read_scan(_save_nifti(tmp_path / "u8.nii.gz", grey.astype(np.uint8)))
    np.testing.assert_array_equal(
        np.stack(volumes.to_model_range(stated, MEDSEG)[0]), np.stack(volumes.to_model_range(u8, MEDSEG)[0])
    )
    with pytest.raises(DataError, match=r"--intensity unit, but the values span \[0, 2\d\d\]"):
        volumes.read_scan(path, intensity="unit")
    hu = _save_nifti(tmp_path / "hu.nii.gz", (grey - 1000).astype(np.int16))
    with pytest.raises(DataError, match=r"--intensity uint8, but the values span"):
        volumes.read_scan(hu, intensity="uint8")
    with pytest.raises(DataError, match=r"--intensity 'grey': allowed hu, hu\+1024, unit, uint8"):
        volumes.read_scan(path, intensity="grey")
    floats = _save_nifti(tmp_path / "unit.nii.gz", grey.astype(np.float32) / 255.0)
    assert volumes.read_scan(floats).intensity.domain == "unit"


def test_a_dicom_series_is_hu_and_refuses_another_stated_domain(lungmask_dicom):
    assert volumes.read_scan(lungmask_dicom).intensity.domain == "hu"
    with pytest.raises(DataError, match="--intensity uint8: a DICOM series is read in HU"):
        volumes.read_scan(lungmask_dicom, intensity="uint8")


def test_a_nifti_without_geometry_is_not_mirrored(tmp_path, sample_pngs):
    """nibabel's ANALYZE fallback affine negates the first axis: the model saw the slices left-right
    flipped (193.3 mL instead of 164.0 mL for the same 3 slices). Stored order, read as RAS, now."""
    hu = ((_medseg_slices(sample_pngs).astype(np.float32) / 255.0) * 1400.0 - 1000.0).astype(np.int16)
    with_geometry = volumes.read_scan(_save_nifti(tmp_path / "ras.nii.gz", hu))
    bare = volumes.read_scan(_save_nifti(tmp_path / "bare.nii.gz", hu, geometry=False), spacing=(0.7, 0.8, 2.5))
    for a, b in zip(with_geometry.slices, bare.slices):
        np.testing.assert_array_equal(a, b)
    assert any("records no orientation" in w and "stored order as RAS" in w for w in bare.warnings)
    assert not any("orientation" in w for w in with_geometry.warnings)
    # masks go back onto the stored voxels of the file, which keeps having no geometry
    labels = [np.zeros_like(s, dtype=np.uint8) for s in bare.slices]
    labels[0][0, 0] = 1  # row 0 = anterior-most, column 0 = patient's right-most in the view
    (written,) = volumes.write_masks(bare, labels, tmp_path / "out", "m")
    back = nib.load(written)
    assert int(back.header["qform_code"]) == 0 and int(back.header["sform_code"]) == 0
    data = np.asarray(back.dataobj)
    assert data.sum() == 1 and data[-1, -1, 0] == 1  # RAS: right-most = last x, anterior-most = last y


def test_a_non_image_file_in_a_slice_folder_is_named(tmp_path, sample_pngs):
    shutil.copyfile(sample_pngs[0], tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not a slice", encoding="utf-8")
    scan = volumes.read_scan(tmp_path)
    assert scan.names == ["a"] and scan.intensity.domain == "uint8"
    assert any(w == "not a PNG/JPG/TIFF slice, left out: notes.txt" for w in scan.warnings)


def test_review_findings_on_intensity(tmp_path, sample_pngs):
    """A review found answers wrong without an error: a uint8 NIfTI with scl_slope/scl_inter read as grey
    levels; --intensity hu accepted on data without air; no way to read CT numbers shifted by +1024; a
    z-scored volume taken as HU; a uint8 NIfTI windowed as HU by the training reader ``nifti``."""
    grey = _medseg_slices(sample_pngs)
    hu = (grey.astype(np.float32) / 255.0) * 1400.0 - 1000.0
    reference = np.stack(
        volumes.to_model_range(volumes.read_scan(_save_nifti(tmp_path / "hu.nii.gz", hu.astype(np.int16))), MEDSEG)[0]
    )
    # HU stored as uint8 with a slope and an intercept: scaled values, Hounsfield units
    vol = np.ascontiguousarray(np.transpose(np.round((hu + 1024) / 8), (2, 1, 0))).astype(np.uint8)
    img = nib.Nifti1Image(vol, np.diag([0.7, 0.8, 2.5, 1.0]))
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(8.0, -1024.0)
    nib.save(img, tmp_path / "u8_slope.nii.gz")
    scan = volumes.read_scan(tmp_path / "u8_slope.nii.gz")
    assert scan.intensity.domain == "hu" and "scl_slope" in scan.intensity.decided_by
    np.testing.assert_allclose(np.stack(volumes.to_model_range(scan, MEDSEG)[0]), reference, atol=8 / 1400 + 1e-6)
    # CT numbers shifted by +1024: refused, then read with --intensity hu+1024; hu is refused on them
    shifted = _save_nifti(tmp_path / "u16.nii.gz", (hu + 1024).astype(np.uint16))
    with pytest.raises(DataError, match=r"hu\+1024"):
        volumes.read_scan(shifted)
    with pytest.raises(DataError, match=r"--intensity hu, but the values span \[\d+, \d+\]: no air"):
        volumes.read_scan(shifted, intensity="hu")
    np.testing.assert_allclose(
        np.stack(volumes.to_model_range(volumes.read_scan(shifted, intensity="hu+1024"), MEDSEG)[0]),
        reference,
        atol=1 / 1400 + 1e-6,  # int16 and uint16 truncate in opposite directions below 0
    )
    # a z-scored volume has negative values but no air: not HU, refused
    z = (hu - hu.mean()) / hu.std()
    with pytest.raises(DataError, match="cannot tell the intensity domain"):
        volumes.read_scan(_save_nifti(tmp_path / "z.nii.gz", z.astype(np.float32)))


def test_the_nifti_training_reader_reads_intensities_as_predict_does(tmp_path, sample_pngs):
    """The reader ``nifti`` HU-windowed a uint8 volume ([0.74, 0.90]) where predict divides by 255: one rule now."""
    grey = _medseg_slices(sample_pngs)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _save_nifti(tmp_path / "images" / "a.nii.gz", grey)
    _save_nifti(tmp_path / "masks" / "a.nii.gz", (grey > 200).astype(np.uint8))
    trained_on = [r.image for r in readers.read_nifti(tmp_path, PreprocessConfig()).slices]
    served = volumes.to_model_range(
        volumes.read_scan(tmp_path / "images" / "a.nii.gz"), {**MEDSEG, "dataset": "nifti"}
    )[0]
    for a, b in zip(trained_on, served):
        np.testing.assert_array_equal(a, b)
    assert max(float(a.max()) for a in trained_on) == pytest.approx(grey.max() / 255)


def test_pixdim_and_affine_that_disagree_use_the_affine(tmp_path, sample_pngs):
    grey = _medseg_slices(sample_pngs)
    vol = np.ascontiguousarray(np.transpose(grey, (2, 1, 0)))
    img = nib.Nifti1Image(vol, None)
    img.set_sform(np.diag([0.7, 0.7, 5.0, 1.0]), code=1)  # sform only; pixdim stays 1 mm
    img.set_data_dtype(np.uint8)
    nib.save(img, tmp_path / "sform.nii.gz")
    scan = volumes.read_scan(tmp_path / "sform.nii.gz")
    assert scan.spacing == pytest.approx((5.0, 0.7, 0.7))
    assert any("pixdim says" in w and "the affine's are used" in w for w in scan.warnings)


def test_palette_pngs_and_colour_tiffs_are_read_as_the_grey_levels_they_show(tmp_path, sample_pngs):
    """A palette PNG's indices were read as grey levels (182.2 mL instead of 64.1) and an RGB TIFF averaged to
    float64, then windowed as Hounsfield units."""
    import tifffile

    grey = np.asarray(Image.open(sample_pngs[0]).convert("L"))
    pal = Image.fromarray(grey).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    (tmp_path / "pal").mkdir()
    pal.save(tmp_path / "pal" / "s.png")
    shown = np.asarray(pal.convert("L"))
    assert not np.array_equal(np.asarray(pal), shown)  # indices are not grey levels
    scan = volumes.read_scan(tmp_path / "pal")
    np.testing.assert_array_equal(scan.slices[0], shown)
    assert scan.intensity.domain == "uint8"
    (tmp_path / "rgb").mkdir()
    tifffile.imwrite(tmp_path / "rgb" / "s.tif", np.stack([grey] * 3, axis=-1))
    scan = volumes.read_scan(tmp_path / "rgb")
    assert scan.slices[0].dtype == np.uint8 and scan.intensity.domain == "uint8"
    np.testing.assert_array_equal(scan.slices[0], grey)
    # the training readers read images the same way (a label map keeps its indices: read_image_2d)
    assert np.array_equal(formats.read_slice_image(tmp_path / "pal" / "s.png"), shown)
    assert np.array_equal(formats.read_image_2d(tmp_path / "pal" / "s.png"), np.asarray(pal))
