"""Runner pieces that need no training: params, overrides, record conflicts, checksums, the CLI list."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungseg.cli import main
from lungseg.errors import ConfigError
from lungseg.experiments import runner
from lungseg.experiments.specs import TABLES
from lungseg.io import atomic_write_json

SPEC = TABLES["lgnet-ablation"]


def test_build_params_puts_profile_row_and_seed_into_params():
    row = SPEC.row("lga")
    prof = runner.effective_profile(SPEC, "cpu", {"epochs": 3, "image_size": None})
    params = runner.build_params(SPEC, row, prof, seed=2, device="cpu")
    assert params.train.model == "lgnet"
    # the row's switches plus the cpu profile's pooled attention
    assert params.train.model_kwargs == {"use_mrc": False, "use_lg_attention": True, "use_ff": False, "max_tokens": 256}
    gpu = runner.build_params(SPEC, row, runner.effective_profile(SPEC, "gpu"), seed=0)
    assert "max_tokens" not in gpu.train.model_kwargs  # paper-size profile keeps the model default
    assert gpu.train.preset == "paper" and params.train.preset == "default"
    assert params.train.seed == 2 and params.train.device == "cpu"
    assert params.train.epochs == 3  # the override
    assert params.train.base_channels == SPEC.profiles["cpu"].base_channels
    assert params.preprocess.image_size == SPEC.profiles["cpu"].image_size
    assert params.preprocess.seed == 0  # the split never changes with the run seed
    assert params.evaluate.split == "test"
    assert params.mlflow.experiment == runner.MLFLOW_EXPERIMENT


def test_effective_profile_rejects_unknown_things():
    with pytest.raises(ConfigError, match="unknown profile 'tpu'"):
        runner.effective_profile(SPEC, "tpu")
    with pytest.raises(ConfigError, match="cannot override"):
        runner.effective_profile(SPEC, "cpu", {"dropout": 0.5})


def test_existing_record_skips_same_settings_and_refuses_others(tmp_path):
    row = SPEC.row("all")
    prof = runner.effective_profile(SPEC, "cpu")
    settings = runner.settings_of(prof, row)
    path = runner.record_path(tmp_path, SPEC.name, "cpu", row.key, 0)
    assert path == tmp_path / "lgnet-ablation" / "cpu" / "all-seed0.json"
    assert runner.existing_record(path, settings) is None
    atomic_write_json(path, {"settings": settings, "metrics": {"dice_mean": 0.5}})
    assert runner.existing_record(path, settings)["metrics"]["dice_mean"] == 0.5
    other = runner.settings_of(runner.effective_profile(SPEC, "cpu", {"epochs": 99}), row)
    with pytest.raises(ConfigError, match="--force"):
        runner.existing_record(path, other)
    path.write_text("{not json", encoding="utf-8")  # a broken record is simply re-run
    assert runner.existing_record(path, settings) is None


def test_cpu_nnunet_cells_are_scored_with_mirror_and_older_records_are_not_mixed_in(tmp_path):
    """#25: ``evaluate.tta`` stays ``auto`` in a cell's params, which the evaluation resolves to ``mirror`` for
    the ``cpu-nnunet`` profile (``train.preset: nnunet``) and ``none`` for the others; a record scored with
    another TTA (the cpu-nnunet records made before #25: ``none``) is refused unless ``--force``."""
    from lungseg.experiments.specs import get_table

    spec = get_table("infnet-protocol")
    nnunet, cpu = runner.effective_profile(spec, "cpu-nnunet"), runner.effective_profile(spec, "cpu")
    row = spec.row("unet")
    assert runner.build_params(spec, row, nnunet, seed=0, device="cpu").evaluate.tta == "auto"
    assert runner.scored_tta(nnunet) == "mirror" and runner.scored_tta(cpu) == "none"
    settings = runner.settings_of(nnunet, row)
    path = runner.record_path(tmp_path, spec.name, "cpu-nnunet", row.key, 0)
    atomic_write_json(path, {"settings": settings, "metrics": {"dice_mean": 0.5, "serving": {"tta": "none"}}})
    assert runner.recorded_tta(runner.existing_record(path, settings)) == "none"  # no tta asked: not checked
    with pytest.raises(ConfigError, match="scored with test-time augmentation 'none', this evaluation uses 'mirror'"):
        runner.existing_record(path, settings, tta="mirror")
    atomic_write_json(path, {"settings": settings, "metrics": {"dice_mean": 0.5, "serving": {"tta": "mirror"}}})
    assert runner.existing_record(path, settings, tta="mirror")["metrics"]["dice_mean"] == 0.5
    old = runner.settings_of(cpu, row)  # a record from before serving settings were recorded: none
    atomic_write_json(path, {"settings": old, "metrics": {"dice_mean": 0.4}})
    assert runner.existing_record(path, old, tta="none")["metrics"]["dice_mean"] == 0.4


def test_run_table_skips_finished_cells_without_touching_data(tmp_path):
    """All records present → nothing is preprocessed or trained (data root does not even exist)."""
    prof = runner.effective_profile(SPEC, "cpu")
    for row in SPEC.rows:
        for seed in (0, 1):
            atomic_write_json(
                runner.record_path(tmp_path, SPEC.name, "cpu", row.key, seed),
                {"settings": runner.settings_of(prof, row)},
            )
    outcomes = runner.run_table(
        SPEC,
        seeds=[0, 1],
        data_root=tmp_path / "missing",
        workdir=tmp_path / "w",
        results_dir=tmp_path,
        log=lambda s: None,
    )
    assert [o.status for o in outcomes] == ["skipped"] * 10
    assert not (tmp_path / "w").exists()


def test_run_table_missing_data_root_is_a_data_error(tmp_path):
    from lungseg.errors import DataError

    with pytest.raises(DataError, match="check --data-root"):
        runner.run_table(
            SPEC,
            seeds=[0],
            rows=["all"],
            data_root=tmp_path / "missing",
            workdir=tmp_path / "w",
            results_dir=tmp_path / "r",
            log=lambda s: None,
        )


def test_folder_digest_changes_with_content_and_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1", encoding="utf-8")
    d1 = runner.folder_digest(tmp_path)
    assert d1["n_files"] == 1 and len(d1["sha256"]) == 64
    (tmp_path / "a" / "x.txt").write_text("2", encoding="utf-8")
    d2 = runner.folder_digest(tmp_path)
    (tmp_path / "a" / "x.txt").rename(tmp_path / "a" / "y.txt")
    d3 = runner.folder_digest(tmp_path)
    assert len({d1["sha256"], d2["sha256"], d3["sha256"]}) == 3


def test_device_info_names_the_cpu():
    info = runner.device_info("cpu")
    assert info["type"] == "cpu" and info["name"] and info["torch"]


def test_cpu_long_profile_is_rejected_for_the_lung_field_table():
    runner.effective_profile(SPEC, "cpu-long")  # the ablation has it
    with pytest.raises(ConfigError, match=r"unknown profile 'cpu-long' for table prnet-kaggle \(valid: cpu, gpu\)"):
        runner.effective_profile(TABLES["prnet-kaggle"], "cpu-long")


def test_cli_table_all_means_every_table_with_the_profile(tmp_path, capsys):
    from lungseg.cli.results import selected_tables

    assert selected_tables(["all"], "cpu") == list(TABLES)
    assert selected_tables(["all"], "cpu-long") == ["lgnet-table1", "lgnet-ablation", "infnet-protocol"]
    assert selected_tables(["prnet-kaggle", "unet-x", "prnet-kaggle"], "cpu") == ["prnet-kaggle", "unet-x"]
    # a named table without the profile: a clear error and exit 2, nothing written
    rc = main(
        [
            "results",
            "run",
            "--table",
            "prnet-kaggle",
            "--profile",
            "cpu-long",
            "--no-report",
            "--results-dir",
            str(tmp_path / "res"),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    assert rc == 2
    assert "unknown profile 'cpu-long' for table prnet-kaggle" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()


def test_records_cite_the_code_at_process_start_not_at_record_time(monkeypatch):
    heads = iter(["a" * 40, "b" * 40])  # a commit lands while the sweep runs
    monkeypatch.setattr(runner, "git_commit", lambda: {"commit": next(heads), "dirty": False, "source": "git"})
    runner.code_at_start.cache_clear()
    try:
        first = runner.code_at_start()
        assert first == {"commit": "a" * 40, "dirty": False, "source": "git", "taken": "at process start"}
        assert runner.code_at_start() is first  # every later record of this process cites the same code
    finally:
        runner.code_at_start.cache_clear()


def test_git_commit_of_this_checkout():
    info = runner.git_commit()
    assert info["source"] in ("git", "LUNGSEG_GIT_COMMIT", "unavailable")
    if info["source"] == "git":
        assert len(info["commit"]) == 40


def test_cli_list(capsys):
    assert main(["results", "list"]) == 0
    out = capsys.readouterr().out
    for name in TABLES:
        assert name in out
    assert "row lga: +LG-Attention = lgnet" in out


def test_cli_unknown_profile_override_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["results", "run", "--table", "lgnet-table1", "--profile", "tpu"])


def test_settings_record_the_preset_only_when_it_is_not_the_default():
    row = SPEC.row("all")
    cpu = runner.settings_of(runner.effective_profile(SPEC, "cpu"), row)
    assert "preset" not in cpu  # as in every record written before profiles had presets
    gpu = runner.settings_of(runner.effective_profile(SPEC, "gpu", {"epochs": 3}), row)
    assert gpu["preset"] == "paper" and gpu["epochs"] == 3 and gpu["image_size"] == 512
    assert gpu != runner.settings_of(runner.effective_profile(SPEC, "gpu"), row)


def test_every_cell_of_every_table_builds_its_params():
    """Each (table, profile, row) gives valid Params: what `lungseg results run` would train."""
    for spec in TABLES.values():
        for pname in spec.profiles:
            prof = runner.effective_profile(spec, pname)
            for row in spec.rows:
                params = runner.build_params(spec, row, prof, seed=0, device="cpu")
                assert params.train.preset == prof.preset and params.preprocess.image_size == prof.image_size


def test_paper_profiles_deviate_from_the_paper_only_where_their_note_says():
    """The paper preset applied to every cell of a ``preset: paper`` profile: the gpu profiles of the
    LG-Net tables are the recipe exactly, Inf-Net's differs in its image size only, cpu-paper in its
    size and epochs (what their notes say)."""
    from lungseg.training.presets import check_paper_size, resolve_preset

    expected = {
        ("lgnet-table1", "gpu"): set(),
        ("lgnet-ablation", "gpu"): set(),
        ("infnet-protocol", "gpu"): {"image_size"},
        ("lgnet-table1", "cpu-paper"): {"epochs", "image_size"},
    }
    seen = set()
    for spec in TABLES.values():
        for pname, prof in spec.profiles.items():
            if prof.preset != "paper":
                continue
            seen.add((spec.name, pname))
            for row in spec.rows:
                params = runner.build_params(spec, row, prof, seed=0, device="cpu")
                result = check_paper_size(resolve_preset(params.train), prof.image_size, "data")
                assert set(result.deviations) == expected[(spec.name, pname)], (spec.name, pname, row.key)
    assert seen == set(expected)


def test_cell_request_names_its_record_and_run_folder(tmp_path):
    options = runner.RunOptions(workdir=tmp_path / "w", results_dir=tmp_path / "r")
    data = runner.PreparedData(tmp_path / "d", {})
    req = runner.CellRequest(
        spec=SPEC,
        profile="cpu",
        prof=runner.effective_profile(SPEC, "cpu"),
        row=SPEC.row("mrc"),
        seed=2,
        data=data,
        options=options,
    )
    assert req.record_path == tmp_path / "r" / "lgnet-ablation" / "cpu" / "mrc-seed2.json"
    assert req.run_dir == tmp_path / "w" / "runs" / "lgnet-ablation" / "cpu" / "mrc-seed2"


def test_cli_path_defaults_come_from_the_working_directory_or_the_environment(tmp_path, monkeypatch):
    from lungseg.cli.results import default_path

    monkeypatch.chdir(tmp_path)
    for name in ("LUNGSEG_SHARED_DATA", "LUNGSEG_RESULTS_DIR", "LUNGSEG_RESULTS_REPORT"):
        monkeypatch.delenv(name, raising=False)
    assert default_path("results_dir").resolve() == tmp_path / "docs" / "results"
    assert default_path("report").resolve() == tmp_path / "docs" / "results.md"
    assert default_path("data_root").resolve() == tmp_path.parent / "shared" / "data"
    env = {"LUNGSEG_RESULTS_DIR": "/x/records", "LUNGSEG_RESULTS_REPORT": "/x/page.md", "LUNGSEG_SHARED_DATA": "/d"}
    assert [default_path(k, env) for k in ("results_dir", "report", "data_root")] == [
        Path("/x/records"),
        Path("/x/page.md"),
        Path("/d"),
    ]


def test_cli_report_from_another_folder(tmp_path, monkeypatch, capsys):
    """The installed package knows no repository: run elsewhere, `results report` says where it looked
    (one line, exit 2, nothing written); with explicit paths it works from any folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LUNGSEG_RESULTS_DIR", raising=False)
    monkeypatch.delenv("LUNGSEG_RESULTS_REPORT", raising=False)
    assert main(["results", "report"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: docs/results: results folder not found")
    assert not (tmp_path / "docs").exists()

    results = tmp_path / "records"
    prof = runner.effective_profile(SPEC, "cpu")
    atomic_write_json(
        runner.record_path(results, SPEC.name, "cpu", "all", 0),
        {
            "table": SPEC.name,
            "profile": "cpu",
            "row": "all",
            "seed": 0,
            "settings": runner.settings_of(prof, SPEC.row("all")),
            "metrics": {"dice_mean": 0.5, "acc_pooled": 0.9},
        },
    )
    page = tmp_path / "page.md"
    assert main(["results", "report", "--results-dir", str(results), "--output", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert "<!-- BEGIN GENERATED: lgnet-ablation/cpu -->" in text and "50.0 (n=1)" in text


def test_experiments_never_locate_the_repository_from_the_package():
    """No module of lungseg.experiments (nor the results command) derives a path from its own file:
    in a non-editable install that path is site-packages, not a checkout."""
    import lungseg.cli.results
    import lungseg.experiments

    sources = sorted(Path(lungseg.experiments.__file__).parent.glob("*.py")) + [Path(lungseg.cli.results.__file__)]
    for path in sources:
        assert "__file__" not in path.read_text(encoding="utf-8"), path


def test_cli_list_shows_the_presets(capsys):
    assert main(["results", "list"]) == 0
    out = capsys.readouterr().out
    assert "profile gpu: image 512², base 64, 120 epochs, batch 4, lr 0.01, preset paper" in out
    assert "profile cpu-paper: image 64², base 64, 2 epochs, batch 4, lr 0.01, preset paper" in out
