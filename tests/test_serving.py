"""lungseg.artifacts.serving: the one value of every setting that changes a served model's output
(issue #20), its fingerprint, its vocabulary, the apply() entry point, and the portable model that
carries it and labels with it."""

from __future__ import annotations

import dataclasses
import json

import mlflow
import numpy as np
import pytest

from lungseg.artifacts.serving import POSTPROCESS, TTA, ServingSettings, apply, resolve_postprocess

PRE = {"image_size": 16, "hu_window": [-1000, 400], "dataset": "medseg", "num_labels": 2, "label_names": ["bg", "inf"]}


def test_round_trip_fingerprint_and_what_it_covers():
    s = ServingSettings.for_model(PRE, 0.55)
    assert s.to_dict() == {
        "threshold": 0.55,
        "image_size": 16,
        "hu_window": [-1000.0, 400.0],
        "dataset": "medseg",
        "postprocess": "none",
        "tta": "none",
    }
    assert ServingSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.fingerprint() == ServingSettings.from_dict(s.to_dict()).fingerprint()
    assert s.fingerprint().startswith("sha256:") and len(s.fingerprint()) == 7 + 64
    others = [
        ServingSettings.for_model(PRE, 0.5),
        ServingSettings.for_model({**PRE, "image_size": 32}, 0.55),
        ServingSettings.for_model({**PRE, "hu_window": [-1000, 300]}, 0.55),
        ServingSettings.for_model({**PRE, "dataset": "kaggle"}, 0.55),
        ServingSettings.for_model(PRE, 0.55, postprocess="largest_components+fill_holes"),
        ServingSettings.for_model(PRE, 0.55, tta="flips"),
    ]
    assert len({o.fingerprint() for o in others} | {s.fingerprint()}) == 7, "a setting is not in the fingerprint"
    assert s.differences(others[0]) == ["threshold: 0.55 vs 0.5"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.threshold = 0.5


def test_precision_round_trips_and_is_in_the_fingerprint():
    """#24: ``precision`` is one more setting; ``auto`` (the behaviour before it) is left out of the dict."""
    auto, fp32, bf16 = (ServingSettings.for_model(PRE, 0.55, precision=p) for p in ("auto", "fp32", "bf16"))
    assert bf16.to_dict() == {**auto.to_dict(), "precision": "bf16"} and "precision" not in auto.to_dict()
    for s in (auto, fp32, bf16):
        back = ServingSettings.from_dict(json.loads(json.dumps(s.to_dict())))
        assert back == s and back.fingerprint() == s.fingerprint()
    assert len({auto.fingerprint(), fp32.fingerprint(), bf16.fingerprint()}) == 3
    assert bf16.differences(auto) == ["precision: 'bf16' vs 'auto'"]
    assert bf16.describe().endswith(", precision bf16") and "precision" not in auto.describe()
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        ServingSettings(precision="fp16")


def test_settings_recorded_before_precision_load_and_keep_their_fingerprint(tmp_path):
    """A metrics.json / model metadata written before the field: no ``precision`` key. It loads as ``auto``
    (fp32 on every device: what evaluation scored it in, #20) with the fingerprint it was recorded
    with — computed with the serving.py of commit 795eb6a (before the field), written out here."""
    old = {
        "threshold": 0.55,
        "image_size": 16,
        "hu_window": [-1000.0, 400.0],
        "dataset": "medseg",
        "postprocess": "largest_components+fill_holes",
        "tta": "flips",
    }
    old_fingerprint = "sha256:7dcede23dc90703f42722b31ca7c76134ef1149f489e98a6fa9d24239f6bd3d2"
    f = tmp_path / "metrics.json"
    f.write_text(json.dumps({"serving": old, "serving_fingerprint": old_fingerprint}), encoding="utf-8")
    recorded = json.loads(f.read_text(encoding="utf-8"))
    s = ServingSettings.from_dict(recorded["serving"])
    assert s.precision == "auto" and s.to_dict() == old
    assert s.fingerprint() == recorded["serving_fingerprint"]


def test_evaluation_scores_with_the_precision_it_records():
    """evaluate.precision goes into the evaluated settings and into the forward pass that is scored."""
    import torch

    from lungseg.evaluation.report import _serving_settings, predict

    ckpt = {"preprocess": PRE, "model_identity": {"name": "unet", "kwargs": {"num_classes": 1}}}
    s = _serving_settings(ckpt, {}, 0.5, "none", "none", "bf16")
    assert s.precision == "bf16" and _serving_settings(ckpt, {}, 0.5, "none", "none").precision == "auto"
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1).eval()
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        want32 = torch.sigmoid(net(torch.from_numpy(x)))[:, 0].numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want16 = torch.sigmoid(net(torch.from_numpy(x)).float())[:, 0].numpy()
    np.testing.assert_array_equal(predict(net, x), want32)
    np.testing.assert_array_equal(predict(net, x, precision="bf16"), want16)
    assert not np.array_equal(want16, want32)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_the_served_arithmetic_is_the_evaluated_one(precision, device, monkeypatch):
    """#20: for every serving precision, on either device (both with bf16), ``lungseg predict`` and the
    portable model serve the arithmetic evaluation scored: the forward pass of
    :func:`lungseg.evaluation.report.predict` equals :func:`lungseg.artifacts.core.predict_array` run in the
    resolved precision. Before, ``auto`` on CUDA served bf16 autocast while evaluation scored it in fp32."""
    import torch

    from lungseg.artifacts import core
    from lungseg.evaluation.report import predict

    monkeypatch.setattr(core, "cpu_supports_bf16", lambda *a: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    served, note = core.resolve_precision(precision, device)
    assert note is None and served == ("bf16" if precision == "bf16" else "fp32")
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1).eval()
    x = np.random.default_rng(0).random((3, 8, 8), dtype=np.float32)
    evaluated = predict(net, x[:, None], precision=precision)
    # on the CPU here: the arithmetic of the resolved precision (bf16 autocast or fp32) is the same op either way
    np.testing.assert_array_equal(core.predict_array(net, x, 8, precision=served)[:, 0], evaluated)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 1.5}, r"threshold must be a probability in \[0, 1\], got 1.5"),
        ({"threshold": float("nan")}, "threshold must be a probability"),
        ({"postprocess": "crf"}, "postprocess must be one of none, largest_components\\+fill_holes, got 'crf'"),
        ({"tta": "rot90"}, "tta must be one of none, flips, got 'rot90'"),
    ],
)
def test_values_outside_the_vocabulary_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ServingSettings(**kwargs)
    with pytest.raises(ValueError, match="unknown serving setting"):
        ServingSettings.from_dict({"threshold": 0.5, "crf": True})
    assert POSTPROCESS[0] == TTA[0] == "none"


def test_apply_thresholds_binary_and_argmaxes_classes():
    p = np.array([[[0.54, 0.55], [0.56, 0.1]]], np.float32)
    assert apply(p, ServingSettings(threshold=0.55)).tolist() == [[[0, 1], [1, 0]]]
    assert apply(p[:, None], ServingSettings(threshold=0.5)).tolist() == [[[1, 1], [1, 0]]]
    classes = np.stack([1 - p, p * 0.5, p * 0.5], axis=1)
    assert apply(classes, ServingSettings()).tolist() == [[[0, 0], [0, 0]]]
    with pytest.raises(ValueError, match="for binary models"):
        apply(classes, ServingSettings(postprocess="largest_components+fill_holes"))


def test_the_post_processing_keeps_the_large_components_and_fills_their_holes():
    """Hand-made slice: two 'lungs' (one with a hole), a speck (< 10 % of the largest) and an empty slice."""
    m = np.zeros((2, 12, 12), np.float32)
    m[0, 1:9, 1:5] = 1.0  # left lung, 32 px, with a hole
    m[0, 4, 2] = 0.0
    m[0, 1:7, 7:11] = 1.0  # right lung, 24 px (≥ 10 % of 32)
    m[0, 10, 10] = 1.0  # a speck, 1 px (< 10 % of 32)
    m[0, 10, 1] = 1.0  # a speck touching nothing
    s = ServingSettings(postprocess="largest_components+fill_holes")
    got = apply(m, s)
    want = np.zeros((2, 12, 12), np.uint8)
    want[0, 1:9, 1:5] = 1  # hole filled
    want[0, 1:7, 7:11] = 1
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(apply(m, ServingSettings()), (m >= 0.5).astype(np.uint8))  # none: as thresholded
    assert resolve_postprocess("auto", ["background", "lung"]) == "largest_components+fill_holes"
    assert resolve_postprocess("auto", ["background", "infection"]) == "none"
    assert resolve_postprocess("none", ["background", "lung"]) == "none"


def test_flips_average_the_mirrored_probabilities():
    """TTA by hand: a net that is not mirror-symmetric gives the mean of its four mirrored answers."""
    import torch

    from lungseg.artifacts.core import FLIPS, forward_probabilities

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1, bias=True).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        want = (
            sum(
                torch.flip(torch.sigmoid(net(torch.flip(x, d) if d else x)), d) if d else torch.sigmoid(net(x))
                for d in FLIPS
            )
            / 4
        )
        got = forward_probabilities(net, x, "flips")
        assert torch.allclose(got, want, atol=1e-7)
        assert not torch.allclose(got, forward_probabilities(net, x, "none"), atol=1e-4)  # it does change the answer


@pytest.mark.slow
def test_the_portable_model_records_its_serving_settings_and_labels_with_them(tmp_path):
    from lungseg.artifacts.pyfunc import save_model, synthetic_slices
    from registry_helpers import IDENTITY, tiny_network

    net = tiny_network()
    serving = ServingSettings.for_model(PRE, 0.55)
    path = save_model(tmp_path / "m", net, identity=IDENTITY, preprocess=PRE, serving=serving)
    model = mlflow.pyfunc.load_model(str(path))
    meta = model.metadata.metadata["lungseg"]
    assert meta["threshold"] == 0.55 and meta["serving"] == serving.to_dict()
    assert meta["serving_fingerprint"] == serving.fingerprint()
    x = synthetic_slices(2, 16)
    probs = model.predict(x)
    assert np.array_equal(model.predict(x, params={"output": "labels"}), (probs >= 0.55).astype(np.uint8))
    # the code the model carries holds the serving module (it loads where lungseg is not installed)
    assert (path / "code" / "lungseg" / "artifacts" / "serving.py").is_file()


@pytest.mark.slow
def test_the_portable_model_serves_its_recorded_precision(tmp_path, monkeypatch):
    """#24: a version evaluated with ``precision: bf16`` serves bf16 on a CPU with it (simulated here: the
    arithmetic is bf16 autocast either way), fp32 on one without (the fallback of lungseg predict)."""
    from lungseg.artifacts import core
    from lungseg.artifacts.pyfunc import save_model, synthetic_slices
    from registry_helpers import IDENTITY, tiny_network

    net = tiny_network()
    serving = ServingSettings.for_model(PRE, 0.5, precision="bf16")
    model = mlflow.pyfunc.load_model(
        str(save_model(tmp_path / "m", net, identity=IDENTITY, preprocess=PRE, serving=serving))
    )
    assert model.metadata.metadata["lungseg"]["serving"]["precision"] == "bf16"
    x = synthetic_slices(2, 16)
    fp32 = core.predict_array(net.eval(), x, 16)[:, 0]
    bf16 = core.predict_array(net.eval(), x, 16, precision="bf16")[:, 0]
    assert not np.array_equal(fp32, bf16)
    monkeypatch.setattr(core, "cpu_supports_bf16", lambda *a: True)
    np.testing.assert_array_equal(model.predict(x), bf16)
    monkeypatch.setattr(core, "cpu_supports_bf16", lambda *a: False)
    np.testing.assert_array_equal(model.predict(x), fp32)
