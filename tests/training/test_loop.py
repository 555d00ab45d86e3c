"""The loop's skeleton: where rank 0 and the other DDP ranks differ (Writer / Worker), and the rooms'
public names the benchmarks use."""

from __future__ import annotations

from types import SimpleNamespace

from lungseg.artifacts.checkpoint import RunInfo, TrainState
from lungseg.config import load_params
from lungseg.training import loop
from lungseg.training.distributed import NO_RUN
from train_helpers import write_params


def _setup(params) -> SimpleNamespace:
    info = RunInfo(
        model_identity={"name": "unet", "kwargs": {}},
        config={},
        params={},
        num_classes=1,
        data_hash="x",
        image_size=32,
        preprocess={"image_size": 32},
    )
    return SimpleNamespace(cfg=params.train, info=info, preset=None)


def test_a_worker_rank_reads_writes_and_logs_nothing(tmp_path, capsys):
    """A DDP rank other than 0 gets a Worker: a fresh state (rank 0's comes by share_start), no MLflow
    run, no files, no messages — even with --resume and a .partial lying there."""
    params = load_params(write_params(tmp_path / "p.yaml", f"sqlite:///{tmp_path / 'mlflow.db'}", preset="default"))
    (tmp_path / "out.partial").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    worker = loop.Worker(params, _setup(params), tmp_path / "data", tmp_path / "out", ddp=None)
    assert not worker.reports and worker.work == tmp_path / "out.partial"
    worker.announce()
    state, continued = worker.open_work(True, None, None, None)
    assert isinstance(state, TrainState) and state.epoch == 0 and not continued
    assert worker.open_run(state, None, continued=False) is NO_RUN
    state.end_epoch({"epoch": 1, "val_dice": 0.5}, min_epochs=0, patience=0)
    worker.end_epoch(state, True, True, None, None, None, None)
    assert worker.log_results(state, 0.0) is None and worker.finish(None) == (None, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not any((tmp_path / "out.partial").iterdir())
    assert capsys.readouterr().err == ""


def test_the_writer_is_rank_0s_and_names_the_work_folder(tmp_path):
    params = load_params(write_params(tmp_path / "p.yaml", f"sqlite:///{tmp_path / 'mlflow.db'}"))
    writer = loop.Writer(params, _setup(params), tmp_path / "data", tmp_path / "models" / "out", ddp=None)
    assert writer.reports and writer.work == tmp_path / "models" / "out.partial"
    assert writer.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}" and writer.run is NO_RUN


def test_the_benchmarks_use_public_names_only():
    """bench/ and tests/ import no private name of lungseg.training (#23)."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    private = []
    for path in [*sorted((repo / "bench").glob("*.py")), *sorted((repo / "tests").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lungseg.training"):
                private += [f"{path.relative_to(repo)}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []


def test_the_library_logs_its_lines_and_a_caller_can_silence_them(caplog, capsys):
    """Training's lines go to ``logging`` (``lungseg.training.*``), not to print: the command line's
    handler shows them as the message alone; a program embedding lungseg can raise the level."""
    import logging

    from lungseg.config import TrainConfig
    from lungseg.training.progress import Progress

    cfg = TrainConfig(epochs=1, progress_every_s=1e-9)
    with caplog.at_level(logging.INFO, logger="lungseg.training"):
        Progress(1, cfg, 5, 20, sync_every_step=True).show(1, 4, [0.5], [0.25])
    (record,) = [r for r in caplog.records if r.name == "lungseg.training.progress"]
    assert record.levelno == logging.INFO and record.getMessage().startswith("epoch 1/1  step 1/5  loss 0.5000")
    assert capsys.readouterr().err.startswith("epoch 1/1  step 1/5")  # the handler: the text alone
    root = logging.getLogger("lungseg")
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        Progress(1, cfg, 5, 20, sync_every_step=True).show(1, 4, [0.5], [0.25])
    finally:
        root.setLevel(level)
    assert capsys.readouterr().err == ""
