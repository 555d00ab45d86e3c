"""Fixtures of the inference tests: real tiny models trained by the real training code, a real
champion in a local MLflow store, and real scans (the bundled MedSeg sample as PNG slices, a NIfTI
made from it with a known spacing, the DICOM fixture of tests/data, the real two-slice series)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from train_helpers import SAMPLE, write_params

REPO = Path(__file__).resolve().parents[2]
#: voxel size of the NIfTI built from the sample: (x, y, z) in mm
NIFTI_ZOOMS = (0.7, 0.8, 2.5)
CHAMPION = "lungseg-inference-tests"


@pytest.fixture(scope="session", autouse=True)
def _one_thread(one_torch_thread):
    yield


def _data_builders():
    """tests/data/conftest.py's real-derived volume builders (that folder is not a package)."""
    spec = importlib.util.spec_from_file_location("data_conftest_builders", REPO / "tests" / "data" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def builders():
    return _data_builders()


@pytest.fixture(scope="session")
def params_file(tmp_path_factory, store) -> Path:
    """The params.yaml of the command-line runs: :func:`train_helpers.write_params` with the test store."""
    return write_params(tmp_path_factory.mktemp("params") / "params.yaml", store)


@pytest.fixture
def cli(params_file, capsys):
    """``lungseg COMMAND ARG... --params <params_file>`` in this process: ``(exit code, stdout, stderr)``
    (an argument may be a path)."""
    from lungseg.cli import main

    def run(command: str, *args) -> tuple[int, str, str]:
        code = main([command, *map(str, args), "--params", str(params_file)])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def predict(cli):
    """``lungseg predict --model MODEL --input SCAN --output OUT EXTRA...`` (:func:`cli`); ``MODEL`` None
    leaves ``--model`` out (the cascade names its models in ``EXTRA``)."""

    def run(model, scan, out, *extra) -> tuple[int, str, str]:
        chosen = () if model is None else ("--model", model)
        return cli("predict", *chosen, "--input", scan, "--output", out, *extra)

    return run


@pytest.fixture
def export(cli):
    """``lungseg export --model MODEL --format FMT --output OUT --check-input <the sample> EXTRA...``
    (:func:`cli`): the parity check runs on the bundled sample's slices."""

    def run(model, fmt: str, out, *extra) -> tuple[int, str, str]:
        return cli(
            "export", "--model", model, "--format", fmt, "--output", out, "--check-input", SAMPLE / "tr_im", *extra
        )

    return run


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> str:
    """A local MLflow store (sqlite) for every inference test, created here: MLflow logs its schema
    setup to stderr on first use, which a test of one-line CLI errors must not see."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture
def store_in_env(store, monkeypatch) -> str:
    """:func:`store` as ``MLFLOW_TRACKING_URI`` for the test (where ``models:/`` URIs are looked up); its URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    return store


def _train(tmp_path_factory, data_dir: Path, store: str, name: str, **train) -> Path:
    from lungseg.config import load_params
    from lungseg.training import train as run_training

    root = tmp_path_factory.mktemp(name)
    params = load_params(write_params(root / "params.yaml", store, **train))
    run_training(params, data_dir, root / "model")
    return root / "model"


@pytest.fixture(scope="session")
def infection_model(tmp_path_factory, tiny_data, store) -> Path:
    """U-Net (base 4) trained 6 epochs (lr 0.01) on the real MedSeg sample at 32² (infection): val Dice
    ≈ 0.26, enough for masks that are neither empty nor everything."""
    return _train(tmp_path_factory, tiny_data, store, "infection", epochs=6, lr=0.01)


@pytest.fixture(scope="session")
def lung_model(tmp_path_factory, shared_data, store) -> Path:
    """U-Net (base 4) trained 4 epochs (lr 0.01) on the real Kaggle lung fields (64 px set) at 32² (lung):
    val Dice ≈ 0.9."""
    from lungseg.config import PreprocessConfig
    from lungseg.data.preprocess import preprocess

    data = tmp_path_factory.mktemp("kaggle") / "kaggle32"
    preprocess("kaggle-64", shared_data / "kaggle-lungs", data, PreprocessConfig(image_size=32))
    return _train(tmp_path_factory, data, store, "lung", epochs=4, batch_size=8, lr=0.01)


@pytest.fixture(scope="session")
def champion(infection_model, store) -> str:
    """The portable model training logged for the infection model (``model_uri`` of its
    ``mlflow_run.json``: :func:`lungseg.artifacts.pyfunc.log_model`), registered and aliased
    ``champion``; its URI."""
    import json

    import mlflow

    from lungseg.tracking import scoped_tracking_uri

    model_uri = json.loads((infection_model / "mlflow_run.json").read_text(encoding="utf-8"))["model_uri"]
    with scoped_tracking_uri(store):
        version = mlflow.register_model(model_uri, CHAMPION)
        mlflow.MlflowClient().set_registered_model_alias(CHAMPION, "champion", version.version)
    return f"models:/{CHAMPION}@champion"


@pytest.fixture(scope="session")
def sample_pngs() -> list[Path]:
    return sorted((SAMPLE / "tr_im").glob("*.png"))[:6]


@pytest.fixture(scope="session")
def nifti_zooms() -> tuple[float, float, float]:
    """Voxel size (x, y, z) in mm of :func:`nifti_scan`."""
    return NIFTI_ZOOMS


@pytest.fixture(scope="session")
def nifti_scan(tmp_path_factory, builders, sample_pngs) -> Path:
    """Six real MedSeg slices stacked into a NIfTI (HU-like float32 from the 8-bit values with the
    inverse of the default window) with voxel size 0.7 × 0.8 × 2.5 mm, stored in LPS+ orientation
    (x flipped, y flipped: not the canonical RAS) so that the orientation round trip is exercised."""
    import nibabel as nib
    from PIL import Image

    slices = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255.0 for p in sample_pngs])  # (z, y, x)
    hu = builders.unit_to_hu(slices)
    vol = np.transpose(hu, (2, 1, 0)).astype(np.float32)  # (x, y, z)
    affine = np.diag([-NIFTI_ZOOMS[0], -NIFTI_ZOOMS[1], NIFTI_ZOOMS[2], 1.0])
    affine[:3, 3] = (100.0, 120.0, -30.0)
    path = tmp_path_factory.mktemp("nifti") / "sample_ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), path)
    return path


@pytest.fixture(scope="session")
def dicom_case(tmp_path_factory, builders, sample_pngs) -> Path:
    """The DICOM fixture of tests/data (SimpleITK writer, RescaleIntercept −1024, written in reverse
    order) built from four real MedSeg slices, with its mask.nii.gz; the case folder."""
    from PIL import Image

    imgs = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255.0 for p in sample_pngs[:4]])
    masks = np.stack(
        [np.asarray(Image.open(SAMPLE / "tr_mask_new" / p.name.replace("tr_im", "tr_mask"))) for p in sample_pngs[:4]]
    )
    case = tmp_path_factory.mktemp("dicom") / "case1"
    builders.write_dicom_case(case, builders.unit_to_hu(imgs), masks)
    return case


@pytest.fixture(scope="session")
def dicom_case_for_seg(tmp_path_factory, dicom_case) -> Path:
    """:func:`dicom_case` with the one type-1 attribute a DICOM SEG needs that SimpleITK's writer
    leaves out: a FrameOfReferenceUID shared by the slices (as every scanner writes one)."""
    import shutil

    import pydicom

    case = tmp_path_factory.mktemp("dicomseg") / "case1"
    shutil.copytree(dicom_case, case)
    uid = pydicom.uid.generate_uid()
    for f in sorted((case / "image").iterdir()):
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = uid
        ds.save_as(f)
    return case


@pytest.fixture(scope="session")
def lungmask_dicom(shared_data) -> Path:
    """The real two-slice chest CT series (lungmask test data, Apache-2.0)."""
    return shared_data / "lungmask-dicom"
