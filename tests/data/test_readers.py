"""Every reader on the real data (or files derived from it), with the real counts."""

import numpy as np
import pytest

from lungseg.data import readers
from lungseg.errors import DataError


def _read(name, path, cfg):
    raw = readers.get_reader(name).func(path, cfg)
    return raw, list(raw.slices)


def _jcs(path):
    """Image paths listed in a JCS list file, parsed independently of the reader."""
    return {line.split()[0] for line in path.read_bytes().decode().split("\r\n") if line.strip()}


def test_jcs_lists_overlap_as_documented(shared_data):
    """The finding the MedSeg reader is built on, checked against the published files."""
    root = shared_data / "medseg-covid100"
    assert b"\r\n" in (root / "train.txt").read_bytes() and b"\r\n" in (root / "test.txt").read_bytes()
    train, test = _jcs(root / "train.txt"), _jcs(root / "test.txt")
    everything = {f"tr_im/{p.name}" for p in (root / "tr_im").glob("*.png")}
    assert len(train) == 79 and len(test) == 20 and len(everything) == 100
    assert test <= train  # every test slice is also in train.txt
    assert len(everything - train - test) == 21


def test_medseg_never_trains_on_test(shared_data, cfg):
    root = shared_data / "medseg-covid100"
    train, test = _jcs(root / "train.txt"), _jcs(root / "test.txt")
    raw, slices = _read("medseg", root, cfg)
    assert len(slices) == 100
    tested = {s.source for s in slices if s.split == "test"}
    assert tested == test and len(tested) == 20
    pool = [s for s in slices if s.split == "pool"]
    assert len(pool) == 80 and not {s.source for s in pool} & test
    lists = {s.source: s.extra["jcs_list"] for s in slices}
    assert sum(v == "both" for v in lists.values()) == len(train & test)
    assert sum(v == "neither" for v in lists.values()) == 100 - len(train | test)
    assert any("train.txt lists 20" in w for w in raw.warnings)
    assert any(w.startswith("slice-level") for w in raw.warnings)
    s = slices[0]
    assert s.image.dtype == np.float32 and 0 <= s.image.min() and s.image.max() <= 1 and s.image.shape == (512, 512)
    fg = np.mean([s.mask.mean() for s in slices])
    assert 0.05 < fg < 0.09  # README: ~6.9 % infection


def test_sample_medseg(sample_dir, cfg):
    _, slices = _read("medseg", sample_dir, cfg)
    assert len(slices) == 22
    assert sum(s.split == "test" for s in slices) == 6 and sum(s.split == "pool" for s in slices) == 16


@pytest.mark.parametrize("multiclass,labels", [(False, {0, 1}), (True, {0, 1, 2})])
def test_covid_semiseg_protocol(shared_data, multiclass, labels):
    from lungseg.config import PreprocessConfig

    raw, slices = _read("covid-semiseg", shared_data / "covid-semiseg", PreprocessConfig(multiclass=multiclass))
    assert sum(s.split == "pool" for s in slices) == 50 and sum(s.split == "test" for s in slices) == 48
    assert raw.num_labels == len(labels)
    assert set(np.unique(np.concatenate([np.unique(s.mask) for s in slices]))) == labels
    assert len({s.image.shape for s in slices}) > 1  # lung crops of varying size
    assert all(s.image.shape == s.mask.shape for s in slices)


def test_kaggle_64(shared_data, cfg):
    raw, slices = _read("kaggle-64", shared_data / "kaggle-lungs" / "64px", cfg)
    assert sum(s.split == "pool" for s in slices) == 213 and sum(s.split == "test" for s in slices) == 54
    masks = np.stack([s.mask for s in slices])
    assert set(np.unique(masks)) == {0, 1}
    assert 0.22 < masks.mean() < 0.26  # README: ~24 % lung
    # same threshold as computed directly from the published arrays
    y = np.concatenate(
        [np.load(shared_data / "kaggle-lungs/64px/y_train.npy"), np.load(shared_data / "kaggle-lungs/64px/y_test.npy")]
    )[..., 0]
    np.testing.assert_array_equal(masks, (y >= 0.5).astype(np.uint8))


def test_kaggle_tiff_hu_windowing(shared_data, cfg):
    import tifffile

    root = shared_data / "kaggle-lungs" / "fullres-sample"
    _, slices = _read("kaggle-tiff", root, cfg)
    (s,) = slices
    hu = tifffile.imread(root / "image_ID_0000_Z_0142.tif").astype(np.float32)
    low, high = cfg.hu_window
    np.testing.assert_allclose(s.image, np.clip((hu - low) / (high - low), 0, 1), atol=1e-6)
    assert s.patient_id == "ID_0000" and set(np.unique(s.mask)) == {0, 1}


def test_msd_lung(shared_data, cfg):
    raw, slices = _read("msd-lung", shared_data / "msd-lung-tumour", cfg)
    assert len(slices) == 130 and all(s.image.shape == (48, 48) for s in slices)
    assert sum(s.mask.any() for s in slices) == 111  # README: 111/130 contain tumour
    assert all(s.patient_id is None for s in slices)  # the HDF5 has no patient ids
    assert any("no patient ids" in w for w in raw.warnings)


def test_pairs_reader_on_real_pngs(tmp_path, shared_data, cfg):
    src = shared_data / "medseg-covid100"
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in (1, 2, 3):
        (tmp_path / "images" / f"case{i}.png").write_bytes((src / f"tr_im/tr_im_{i:04d}.png").read_bytes())
        (tmp_path / "masks" / f"case{i}.png").write_bytes((src / f"tr_mask_new/tr_mask_{i:04d}.png").read_bytes())
    raw, slices = _read("pairs", tmp_path, cfg)
    assert [s.id for s in slices] == ["case1", "case2", "case3"]
    assert all(s.split is None and s.patient_id is None for s in slices)


def test_nifti_reader_slices_axially_with_spacing(tmp_path, shared_data, cfg, build):
    x, y = build.msd_patches(shared_data, 0, 5)
    build.nifti_pair(tmp_path, "vol1", build.unit_to_hu(x, cfg.hu_window), y)
    raw, slices = _read("nifti", tmp_path, cfg)
    assert len(slices) == 5 and {s.patient_id for s in slices} == {"vol1"}
    assert slices[0].spacing == pytest.approx((0.8, 0.7))  # (row = y, col = x)
    # radiological view of a RAS volume: written as (z, y, x) → rows flipped (anterior up), cols flipped
    np.testing.assert_allclose(slices[2].image, x[2][::-1, ::-1], atol=1e-4)
    np.testing.assert_array_equal(slices[2].mask, y[2][::-1, ::-1])


def test_nifti_geometry_mismatch_names_both_files(tmp_path, shared_data, cfg, build):
    x, y = build.msd_patches(shared_data, 0, 4)
    build.nifti_pair(tmp_path, "vol1", build.unit_to_hu(x), y, mask_affine=np.diag([0.7, 0.8, 5.0, 1.0]))
    with pytest.raises(DataError) as err:
        _read("nifti", tmp_path, cfg)
    msg = str(err.value)
    assert "images/vol1.nii.gz" in msg and "masks/vol1.nii.gz" in msg and "geometry" in msg


def test_dicom_reader_applies_rescale(tmp_path, shared_data, cfg, build):
    x, y = build.msd_patches(shared_data, 10, 14)
    build.dicom_case(tmp_path / "caseA", build.unit_to_hu(x, cfg.hu_window), y)
    import pydicom

    stored = pydicom.dcmread(next((tmp_path / "caseA" / "image").iterdir()))
    assert float(stored.RescaleIntercept) == -1024 and stored.pixel_array.min() >= 0  # HU needs the rescale
    raw, slices = _read("dicom", tmp_path, cfg)
    assert len(slices) == 4 and {s.patient_id for s in slices} == {"caseA"}
    assert slices[0].spacing == pytest.approx((0.7, 0.8))
    for i, s in enumerate(slices):  # sorted by position although files were written in reverse
        np.testing.assert_allclose(s.image, x[i], atol=1 / 1400 + 1e-6)  # HU rounded to integers
        np.testing.assert_array_equal(s.mask, y[i])


def test_dicom_mask_on_other_grid_is_rejected(tmp_path, shared_data, cfg, build):
    import SimpleITK as sitk

    x, y = build.msd_patches(shared_data, 10, 13)
    build.dicom_case(tmp_path / "caseA", build.unit_to_hu(x), y)
    mask = sitk.ReadImage(str(tmp_path / "caseA" / "mask.nii.gz"))
    mask.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(mask, str(tmp_path / "caseA" / "mask.nii.gz"))
    with pytest.raises(DataError, match="geometry does not match mask .*mask.nii.gz: origin"):
        _read("dicom", tmp_path, cfg)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DataError) as err:
        readers.get_reader("medsegg")
    for name in ("medseg", "covid-semiseg", "kaggle-64", "kaggle-tiff", "msd-lung", "pairs", "nifti", "dicom"):
        assert name in str(err.value)


def test_geometry_check_lists_every_difference(tmp_path):
    from lungseg.data.readers import require_same_geometry as _require_same_geometry

    img, mask = tmp_path / "ct.nii.gz", tmp_path / "mask.nii.gz"
    _require_same_geometry(img, mask, (4, 5), (4, 5), [("spacing", (0.7, 0.8), (0.7, 0.8000001), 1e-3, True)])
    with pytest.raises(DataError) as exc:
        _require_same_geometry(
            img,
            mask,
            (4, 5, 6),
            (4, 5, 7),
            [
                ("spacing", (0.7, 0.8), (0.7, 0.9), 1e-3, True),
                ("direction", np.eye(3), -np.eye(3), 1e-4, False),
                ("origin", (0.0, 0.0), (0.0, 0.0, 1.0), 1e-2, True),  # a different rank is a difference, not a crash
            ],
        )
    msg = str(exc.value)
    assert str(img) in msg and f"geometry does not match mask {mask}" in msg
    assert "shape (4, 5, 6) vs (4, 5, 7)" in msg and "spacing (0.7, 0.8) vs (0.7, 0.9)" in msg
    assert "direction differs" in msg and "origin (0.0, 0.0) vs (0.0, 0.0, 1.0)" in msg


# ---------------------------------------------------------------------------------------- pairing


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_match_pairs_by_key_with_prefixes_suffixes_and_natural_order(tmp_path):
    _touch(tmp_path / "im", "tr_im_10.png", "tr_im_2.png", "notes.txt", "other.png")
    _touch(tmp_path / "gt", "tr_mask_2.png", "tr_mask_10.PNG")
    pairs = readers.match_pairs(
        tmp_path / "im", tmp_path / "gt", (".png",), image_prefix="tr_im_", mask_prefix="tr_mask_"
    )
    assert [(k, i.name, m.name) for k, i, m in pairs] == [
        ("2", "tr_im_2.png", "tr_mask_2.png"),
        ("10", "tr_im_10.png", "tr_mask_10.PNG"),
    ]
    # images and masks in one folder, told apart by their prefixes (the flat Kaggle TIFF layout)
    _touch(tmp_path / "flat", "image_ID_1.tif", "mask_ID_1.tif", "image_ID_0.tiff", "mask_ID_0.tif")
    pairs = readers.match_pairs(
        tmp_path / "flat", tmp_path / "flat", (".tif", ".tiff"), image_prefix="image_", mask_prefix="mask_"
    )
    assert [k for k, _, _ in pairs] == ["ID_0", "ID_1"]
    _touch(tmp_path / "nii", "a.nii.gz")
    _touch(tmp_path / "niim", "a.nii")
    assert [k for k, _, _ in readers.match_pairs(tmp_path / "nii", tmp_path / "niim", (".nii.gz", ".nii"))] == ["a"]


@pytest.mark.parametrize(
    "images,masks,culprit,problem",
    [
        (["a.png", "b.png"], ["a.png"], "im/b.png", "image has no mask (expected {root}/gt/b.*)"),
        (["a.png"], ["a.png", "c.png"], "gt/c.png", "mask has no image (expected {root}/im/c.*)"),
        ([], ["a.png"], "im", "no image files"),
    ],
)
def test_match_pairs_names_the_unpaired_file(tmp_path, images, masks, culprit, problem):
    _touch(tmp_path / "im", *images)
    _touch(tmp_path / "gt", *masks)
    with pytest.raises(DataError) as err:
        readers.match_pairs(tmp_path / "im", tmp_path / "gt", (".png",))
    assert str(err.value).startswith(f"{tmp_path / culprit}: ")
    assert problem.format(root=tmp_path) in str(err.value)


def test_medseg_and_flat_kaggle_use_the_shared_pairing(tmp_path, sample_dir, shared_data, cfg):
    """The MedSeg (tr_im_ ↔ tr_mask_) and flat Kaggle (image_ ↔ mask_) layouts pair through
    match_pairs: a stray mask is now found too, naming the file."""
    import shutil

    raw = tmp_path / "medseg"
    shutil.copytree(sample_dir, raw)
    (raw / "tr_mask_new" / "tr_mask_0999.png").write_bytes((raw / "tr_mask_new" / "tr_mask_0003.png").read_bytes())
    with pytest.raises(DataError, match=r"tr_mask_0999.png: mask has no image \(expected .*tr_im/tr_im_0999"):
        _read("medseg", raw, cfg)
    flat = tmp_path / "kaggle"
    shutil.copytree(shared_data / "kaggle-lungs" / "fullres-sample", flat)
    (flat / "image_ID_0000_Z_0142.tif").rename(flat / "image_ID_0001_Z_0001.tif")
    with pytest.raises(
        DataError, match=r"image_ID_0001_Z_0001.tif: image has no mask \(expected .*mask_ID_0001_Z_0001"
    ):
        _read("kaggle-tiff", flat, cfg)
