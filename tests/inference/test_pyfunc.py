"""The registered MLflow model: its contract, its parity with ``lungseg predict``, loading where
lungseg is not installed, and serving over REST with ``mlflow models serve``."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from lungseg.artifacts import core
from lungseg.artifacts.pyfunc import synthetic_slices
from lungseg.inference.predict import SliceInference, load_model
from lungseg.tracking import scoped_tracking_uri
from train_helpers import SAMPLE


@pytest.fixture(scope="module")
def real_slices() -> np.ndarray:
    """Three real MedSeg slices (512², 8-bit → [0, 1], the training rule of a MedSeg model)."""
    files = sorted((SAMPLE / "tr_im").glob("*.png"))[-3:]
    return np.stack([np.asarray(Image.open(f), dtype=np.float32) / 255.0 for f in files])


@pytest.fixture(scope="module")
def pyfunc_model(champion, store):
    with scoped_tracking_uri(store):
        return mlflow.pyfunc.load_model(champion)


@pytest.fixture(scope="module")
def champion_dir(champion, store, tmp_path_factory) -> Path:
    with scoped_tracking_uri(store):
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=champion, dst_path=str(tmp_path_factory.mktemp("champion"))
            )
        )


@pytest.mark.slow
def test_the_registered_model_records_its_contract(champion, champion_dir, infection_model, store):
    from mlflow.models import Model

    from lungseg.artifacts.checkpoint import load_checkpoint

    client = mlflow.MlflowClient(store)
    name, alias = champion.removeprefix("models:/").split("@")
    version = client.get_model_version_by_alias(name, alias)
    run_id = json.loads((infection_model / "mlflow_run.json").read_text(encoding="utf-8"))["run_id"]
    logged = client.get_logged_model(version.model_id or version.source.removeprefix("models:/"))
    assert version.run_id == run_id and logged.source_run_id == run_id
    assert logged.experiment_id == client.get_run(run_id).info.experiment_id  # the run's experiment, not Default

    model = Model.load(str(champion_dir))
    inputs, outputs = model.signature.inputs.to_dict(), model.signature.outputs.to_dict()
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, -1, -1)}}]
    assert outputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, -1, -1)}}]
    assert [p.name for p in model.signature.params.params] == ["output"]
    meta = model.metadata["lungseg"]
    ckpt = load_checkpoint(infection_model / "best.pt")
    assert meta["preprocess"] == ckpt["preprocess"] and meta["identity"] == ckpt["model_identity"]
    assert meta["threshold"] == 0.5 and meta["label_names"] == ["background", "infection"]
    assert meta["preprocess"]["image_size"] == 32 and meta["preprocess"]["hu_window"] == [-1000.0, 400.0]
    example = np.asarray(json.loads((champion_dir / "input_example.json").read_text(encoding="utf-8"))["inputs"])
    np.testing.assert_allclose(example, synthetic_slices(), atol=1e-7)  # the phantom, not patient data
    reqs = (champion_dir / "requirements.txt").read_text(encoding="utf-8").split()
    assert sorted(r.split("==")[0] for r in reqs) == ["cloudpickle", "mlflow", "numpy", "torch"]
    assert (champion_dir / "code" / "lungseg" / "models" / "unet.py").is_file()


@pytest.mark.slow
def test_pyfunc_predicts_what_lungseg_predict_predicts(pyfunc_model, infection_model, real_slices):
    model = load_model(infection_model)
    probs = pyfunc_model.predict(real_slices)
    assert probs.shape == real_slices.shape and probs.dtype == np.float32
    ref = core.predict_array(model.net, real_slices, model.image_size)[:, 0]
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    labels = pyfunc_model.predict(real_slices, params={"output": "labels"})
    engine = SliceInference(model, device="cpu", batch_size=2).labels(list(real_slices))
    np.testing.assert_array_equal(labels, np.stack(engine))
    small = pyfunc_model.predict(real_slices[:, ::4, ::3])  # another size: resized there and back
    assert small.shape == (3, 128, 171)


@pytest.mark.slow
def test_a_multiclass_model_returns_class_probabilities_and_argmax_labels(real_slices, tmp_path):
    """A 3-label model (COVID-SemiSeg's background / ground-glass / consolidation) saved locally:
    output (N, C, H, W) softmax, labels the arg-max."""
    from mlflow.models import Model

    from lungseg.artifacts.pyfunc import save_model

    identity = {"name": "unet", "kwargs": {"in_channels": 1, "num_classes": 3, "base_channels": 4}}
    torch_net = core.build_network(identity)
    pre = {
        "image_size": 32,
        "hu_window": [-1000.0, 400.0],
        "dataset": "covid-semiseg",
        "num_labels": 3,
        "label_names": ["background", "ground-glass", "consolidation"],
    }
    path = save_model(tmp_path / "m", torch_net, identity=identity, preprocess=pre)
    assert Model.load(str(path)).signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, -1, -1)
    model = mlflow.pyfunc.load_model(str(path))
    probs = model.predict(real_slices[:2])
    assert probs.shape == (2, 3, 512, 512)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(model.predict(real_slices[:2], params={"output": "labels"}), probs.argmax(axis=1))


@pytest.mark.slow
def test_raw_hu_is_refused(pyfunc_model, real_slices):
    with pytest.raises(Exception, match=r"outside \[0, 1\]"):
        pyfunc_model.predict(real_slices * 1400.0 - 1000.0)


@pytest.mark.slow
def test_it_loads_where_lungseg_is_not_installed(champion_dir, pyfunc_model, real_slices, tmp_path):
    """A fresh interpreter with the venv's site-packages but neither the repository nor lungseg's
    editable install on its path (``-I -S``: no cwd, no PYTHONPATH, no ``.pth`` files — the editable
    install is a ``.pth`` hook): lungseg is not importable, and the model still loads and predicts,
    from the copy of the modules it carries."""
    import sysconfig

    np.save(tmp_path / "x.npy", real_slices)
    code = (
        "import sys, importlib.util, json\n"
        f"sys.path.append({sysconfig.get_paths()['purelib']!r})\n"
        "before = importlib.util.find_spec('lungseg') is not None\n"
        "import numpy as np, mlflow.pyfunc\n"
        f"m = mlflow.pyfunc.load_model({str(champion_dir)!r})\n"
        f"np.save({str(tmp_path / 'p.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r})))\n"
        "import lungseg\n"
        "print(json.dumps({'before': before, 'lungseg': lungseg.__file__}))\n"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "OMP_NUM_THREADS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HOME": os.environ.get("HOME", str(tmp_path)),
    }
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        encoding="utf-8",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["before"] is False
    assert Path(info["lungseg"]).is_relative_to(champion_dir / "code")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), pyfunc_model.predict(real_slices), atol=1e-6)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.loads(resp.read())


@pytest.mark.integration
def test_mlflow_models_serve_answers_like_the_in_process_model(champion, store, pyfunc_model, real_slices, tmp_path):
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "models",
            "serve",
            "-m",
            champion,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text(encoding="utf-8", errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the model server did not answer /ping within 300 s"
            time.sleep(1.0)
        one = real_slices[:1]
        probs = np.asarray(_post(f"{base}/invocations", {"inputs": one.tolist()})["predictions"], np.float32)
        np.testing.assert_allclose(probs, pyfunc_model.predict(one), atol=1e-5)
        labels = _post(f"{base}/invocations", {"inputs": one.tolist(), "params": {"output": "labels"}})
        np.testing.assert_array_equal(
            np.asarray(labels["predictions"]), pyfunc_model.predict(one, params={"output": "labels"})
        )
        bad = urllib.request.Request(
            f"{base}/invocations",
            data=json.dumps({"inputs": (one * 1000).tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=300)
        # a 400 whose message is the one-line reason: no stack trace (server paths), not MLflow's
        # "Encountered an unexpected error…" nor its "Failed to predict data '<the whole input>'"
        body = json.loads(err.value.read())
        assert err.value.code == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert re.fullmatch(r"input values \[\S+, \S+\] are outside \[0, 1\]: [^\n/]*", body["message"]), body
        assert "stack_trace" not in body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        log.close()
