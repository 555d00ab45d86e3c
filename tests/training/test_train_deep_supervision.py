"""Deep supervision in the training loop: models that declare ``deep_supervision_weights`` (Inf-Net,
AWSnet) train every head through ``forward_heads`` and :class:`lungseg.losses.DeepSupervisionLoss`."""

from __future__ import annotations

import mlflow
import pytest
import torch

from lungseg.artifacts.checkpoint import build_model, load_checkpoint
from lungseg.config import load_params
from lungseg.data.dataset import load_split
from lungseg.losses import DeepSupervisionLoss, create_loss
from lungseg.training import train
from lungseg.training.setup import epoch_seed, seed_everything
from train_helpers import write_params


@pytest.mark.slow
def test_infnet_trains_its_edge_head_and_logs_the_deep_supervision_loss(tmp_path, tiny_data):
    """One epoch = one step (batch 16 ≥ the 14 training slices, no augmentation): the logged loss is the
    deep-supervision loss of the initial weights on that batch, and the edge head — reached by the
    deep-supervision loss only, never by the main output — has moved."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = load_params(write_params(tmp_path / "p.yaml", uri, model="infnet", epochs=1, batch_size=16, augment=False))
    result = train(params, tiny_data, tmp_path / "out")
    best = load_checkpoint(tmp_path / "out" / "best.pt")
    assert best["epoch"] == 1

    seed_everything(params.train.seed)  # what train() does before it builds the model
    init = build_model(best["model_identity"])
    key = "edge_head.0.weight"
    assert key in best["model_state"]
    assert not torch.equal(init.state_dict()[key], best["model_state"][key])  # moved by the DS loss

    train_set = load_split(tiny_data, "train")
    order = torch.randperm(len(train_set.images), generator=torch.Generator().manual_seed(epoch_seed(0, 1)))
    x = torch.from_numpy(train_set.images)[order]
    y = torch.from_numpy(train_set.masks).long()[order]
    base = create_loss("bce_dice")  # loss: auto for infnet
    init.train()
    torch.manual_seed(epoch_seed(0, 1))
    with torch.no_grad():
        outputs = init.forward_heads(x)
        ds_loss = DeepSupervisionLoss(base, init.deep_supervision_weights, init.deep_supervision_targets)(outputs, y)
        main_only = base(outputs[0], y)
    assert len(outputs) == 5 and ds_loss.item() > main_only.item() * 1.5  # the two differ: the test can tell
    logged = result.history[0]["train_loss"]
    assert logged == pytest.approx(ds_loss.item(), rel=1e-5)
    history = mlflow.MlflowClient(uri).get_metric_history(result.run_id, "train_loss")
    assert [m.value for m in history] == [pytest.approx(logged, rel=1e-6)]
