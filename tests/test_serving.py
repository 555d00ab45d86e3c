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
        ServingSettings.for_model(PRE, 0.55, tta="mirror"),
    ]
    assert len({o.fingerprint() for o in others} | {s.fingerprint()}) == 8, "a setting is not in the fingerprint"
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
        ({"tta": "rot90"}, "tta must be one of none, flips, mirror, got 'rot90'"),
        ({"tta": "auto"}, "tta must be one of none, flips, mirror, got 'auto'"),  # resolved before it is a setting
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


# ------------------------------------------------------------------------------ tta mirror / auto (#25)
def _old_flips(net, x):
    """``forward_probabilities(net, x, "flips")`` as commit 43c178c wrote it (before ``mirror``), verbatim."""
    import torch

    from lungseg.artifacts.core import to_probabilities

    total = None
    for dims in ((), (-1,), (-2,), (-2, -1)):
        p = to_probabilities(net(torch.flip(x, dims) if dims else x))
        p = torch.flip(p, dims) if dims else p
        total = p if total is None else total + p
    return total / 4


def test_mirror_averages_the_logits_as_nnunet_and_flips_is_unchanged():
    """``mirror``: sigmoid/softmax of the mean of the four mirrored logits, each flipped back (nnU-Net's
    ``_internal_maybe_mirror_and_predict``), by hand; ``flips`` gives bit for bit what it gave before."""
    import torch

    from lungseg.artifacts.core import forward_probabilities, mirrored_logits

    torch.manual_seed(0)
    for classes in (1, 3):
        net = torch.nn.Conv2d(1, classes, 3, padding=1, bias=True).eval()
        with torch.no_grad():
            net.weight.mul_(8.0)  # logits of several units: the mean of probabilities and of logits differ
            x = torch.rand(2, 1, 8, 8)
            logits = [net(x), net(x.flip(-1)).flip(-1), net(x.flip(-2)).flip(-2), net(x.flip(-2, -1)).flip(-2, -1)]
            mean = (logits[0] + logits[1] + logits[2] + logits[3]) / 4
            want = torch.sigmoid(mean) if classes == 1 else torch.softmax(mean, dim=1)
            torch.testing.assert_close(mirrored_logits(net, x), mean, rtol=0, atol=1e-6)
            torch.testing.assert_close(forward_probabilities(net, x, "mirror"), want, rtol=0, atol=1e-6)
            flips = forward_probabilities(net, x, "flips")
            assert torch.equal(flips, _old_flips(net, x))  # models registered with flips serve as before
            assert float((flips - want).abs().max()) > 1e-3  # mirror is not flips
    with pytest.raises(ValueError, match="tta must be one of none, flips, mirror, got 'rot90'"):
        forward_probabilities(net, x, "rot90")


def test_mirror_is_exact_where_probabilities_saturate():
    """A net whose logit is a fixed 2×2 table, whatever the input: over the four mirrorings each output pixel
    sees every entry once. Table +40, +40, −60, −60 (sigmoids that round to 1 and to ~1e-26 in fp32): the
    mean logit is −10 → p = sigmoid(−10), background; the mean of the probabilities (``flips``) is 0.5 →
    foreground at threshold 0.5. ``mirror`` follows the logits, as nnU-Net, where probabilities saturate."""
    import torch

    from lungseg.artifacts.core import forward_probabilities, to_labels

    class Table(torch.nn.Module):
        def __init__(self, table):
            super().__init__()
            self.table = table

        def forward(self, x):
            return x * 0 + self.table

    net = Table(torch.tensor([[40.0, 40.0], [-60.0, -60.0]])[None, None])
    x = torch.zeros(1, 1, 2, 2)
    got = forward_probabilities(net, x, "mirror")
    torch.testing.assert_close(got, torch.sigmoid(torch.full_like(got, -10.0)), rtol=0, atol=0)
    flips = forward_probabilities(net, x, "flips")
    torch.testing.assert_close(flips, torch.full_like(got, 0.5), rtol=0, atol=1e-7)
    assert to_labels(got, 0.5).sum() == 0 and to_labels(flips, 0.5).sum() == 4


def test_tta_auto_resolves_by_the_training_preset():
    from lungseg.artifacts.serving import resolve_tta, trained_preset

    assert resolve_tta("auto", "nnunet") == "mirror"
    assert resolve_tta("auto", "default") == resolve_tta("auto", "paper") == resolve_tta("auto", None) == "none"
    for explicit in ("none", "flips", "mirror"):  # an explicit value is what is recorded, whatever the preset
        assert resolve_tta(explicit, "nnunet") == resolve_tta(explicit, "default") == explicit
    assert trained_preset({"config": {"preset": "nnunet"}}) == "nnunet"
    assert trained_preset({"config": {"preset": "default"}}) == "default"
    assert trained_preset({"config": {}}) == trained_preset({}) == trained_preset(None) == "default"


def test_the_demo_model_keeps_tta_none_and_its_fingerprint():
    """The demo (params.yaml: ``train.preset: default``, ``evaluate.tta: auto``) is evaluated with ``tta: none``
    and the fingerprint its committed evaluation recorded (reports/medseg/metrics.json before #25:
    ``sha256:c27b8e92…``, computed with the serving.py of commit 43c178c)."""
    from pathlib import Path

    from lungseg.config import load_params
    from lungseg.evaluation.report import _serving_settings

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert params.evaluate.tta == "auto" and params.train.preset == "default"
    ckpt = {
        "preprocess": {"image_size": 64, "hu_window": [-1000.0, 400.0], "dataset": "medseg"},
        "config": params.train.model_dump(),
        "model_identity": {"name": "unet", "kwargs": {"num_classes": 1}},
    }
    meta = {"label_names": ["background", "infection"]}
    s = _serving_settings(ckpt, meta, params.evaluate.threshold, params.evaluate.postprocess, params.evaluate.tta)
    assert s.tta == "none"
    assert s.fingerprint() == "sha256:c27b8e9267e5db4cf9d4d69ca710c07cc698f54cd1b1396830b2e165280e94c4"
    nnunet = {**ckpt, "config": {**ckpt["config"], "preset": "nnunet"}}
    assert _serving_settings(nnunet, meta, 0.5, "auto", "auto").tta == "mirror"
    assert _serving_settings(nnunet, meta, 0.5, "auto", "none").tta == "none"  # explicit: as written
    assert _serving_settings(nnunet, meta, 0.5, "auto", "flips").tta == "flips"
    # a model registered with flips before #25: its recorded settings and fingerprint (commit 43c178c)
    flips = ServingSettings.for_model(ckpt["preprocess"], 0.5, tta="flips")
    assert flips.fingerprint() == "sha256:aed35e4107532aa7c6f6b1d86b8cd2d61eebd0f600774d0bbeea0163ec83e8f5"
