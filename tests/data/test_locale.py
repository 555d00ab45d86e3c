"""The process locale survives DICOM I/O. SimpleITK's DICOM writer (GDCM) sets it to C and leaves it so
(a slice position is enough); Python's default text encoding then becomes ASCII when it does not run in
UTF-8 mode (pytest outside ``make``, which exports PYTHONUTF8), and a later bare ``read_text()`` of
non-ASCII text failed in whatever test ran next. The tests' DICOM builder puts the locale back; lungseg
itself reads DICOM with pydicom and writes masks as NIfTI, which leave it alone (checked here)."""

from __future__ import annotations

import locale

import numpy as np
import pytest

from lungseg.data import formats, readers
from lungseg.inference import volumes


@pytest.fixture
def utf8_locale():
    """The process in the C.UTF-8 locale (what a bare ``LANG=C.UTF-8`` shell gives), put back afterwards,
    so that a switch to plain C shows both in the locale and in Python's default encoding."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        locale.setlocale(locale.LC_ALL, "C.UTF-8")
    except locale.Error:
        pytest.skip("no C.UTF-8 locale on this machine")
    try:
        yield locale.setlocale(locale.LC_ALL)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _codeset() -> str:
    """The locale's encoding: Python's default text encoding when it does not run in UTF-8 mode (in UTF-8
    mode, as under ``make``, ``locale.getpreferredencoding`` answers utf-8 whatever the locale)."""
    return locale.nl_langinfo(locale.CODESET)


def _case(tmp_path, shared_data, cfg, build):
    x, y = build.msd_patches(shared_data, 10, 13)
    build.dicom_case(tmp_path / "caseA", build.unit_to_hu(x, cfg.hu_window), y)
    return tmp_path / "caseA"


def test_the_dicom_builder_puts_the_locale_back(utf8_locale, tmp_path, shared_data, cfg, build):
    case = _case(tmp_path, shared_data, cfg, build)
    assert len(list((case / "image").iterdir())) == 3  # the series was written (by SimpleITK's DICOM writer)
    assert locale.setlocale(locale.LC_ALL) == utf8_locale
    assert _codeset() == "UTF-8"


def test_simpleitk_dicom_writer_does_switch_the_locale(utf8_locale, tmp_path):
    """What the builder guards against is real: the writer it wraps does switch the locale (were
    SimpleITK to stop doing so, the guard would be dead weight and this test says so)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((1, 8, 8), np.int16))[:, :, 0]
    img.SetMetaData("0020|0032", "0\\0\\0")
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(tmp_path / "one.dcm"))
    writer.Execute(img)
    assert locale.setlocale(locale.LC_CTYPE) == "C"
    assert _codeset() == "ANSI_X3.4-1968"  # ASCII: outside UTF-8 mode a bare read_text() of "é" fails now


def test_lungseg_dicom_reading_and_mask_writing_keep_the_locale(utf8_locale, tmp_path, shared_data, cfg, build):
    """The training reader (pydicom series + SimpleITK mask), a DICOM file read by SimpleITK, predict's
    scan reader and its mask writer (SimpleITK NIfTI in the series' geometry): the locale is unchanged."""
    case = _case(tmp_path, shared_data, cfg, build)
    raw = readers.get_reader("dicom").func(tmp_path, cfg)
    assert len(list(raw.slices)) == 3
    vol, *_ = formats.read_sitk_volume(sorted((case / "image").iterdir())[0])
    assert vol.shape[0] == 1
    scan = volumes.read_scan(case / "image")
    labels = [np.zeros(s.shape, np.uint8) for s in scan.slices]
    (written,) = volumes.write_masks(scan, labels, tmp_path / "out", "infection_mask")
    assert written.name == "infection_mask.nii.gz" and written.is_file()
    assert locale.setlocale(locale.LC_ALL) == utf8_locale
    assert _codeset() == "UTF-8"


def test_a_test_that_leaves_the_locale_changed_fails_by_name(utf8_locale, request):
    """The guard every test runs in (tests/conftest.py): a changed LC_CTYPE fails the test that changed it,
    and is put back for the next one."""
    root = request.config.rootpath / "tests" / "conftest.py"
    conftest = next(m for m in request.config.pluginmanager.get_plugins() if getattr(m, "__file__", None) == str(root))
    guard = conftest.locale_kept_by_the_test()
    next(guard)
    locale.setlocale(locale.LC_CTYPE, "C")
    with pytest.raises(pytest.fail.Exception, match="LC_CTYPE C.UTF-8 -> C"):
        next(guard)
    assert locale.setlocale(locale.LC_ALL) == utf8_locale
    guard = conftest.locale_kept_by_the_test()
    next(guard)
    with pytest.raises(StopIteration):  # unchanged: the test passes
        next(guard)
