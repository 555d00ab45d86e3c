"""The table specs are valid against the real model zoo, the readers and the real data folders."""

from __future__ import annotations

import dataclasses

import pytest

from lungseg.data.readers import READERS
from lungseg.errors import ConfigError
from lungseg.experiments.specs import TABLES, get_table
from lungseg.experiments.tables import PROFILES, REQUIRED_PROFILES, Row, slug, table_profiles, validate_spec
from lungseg.models import create_model, list_models

EXPECTED = {"lgnet-table1", "lgnet-ablation", "infnet-protocol", "prnet-kaggle"}


def test_the_four_tables_exist():
    assert set(TABLES) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_spec_is_valid(name):
    spec = TABLES[name]
    assert validate_spec(spec) == []
    assert spec.dataset in READERS
    assert all(row.model in list_models() for row in spec.rows)
    assert len(spec.seeds) >= 3
    assert set(REQUIRED_PROFILES) <= set(spec.profiles) <= set(PROFILES)


def test_cpu_long_profile_is_defined_for_the_infection_tables_only():
    have = {name for name, spec in TABLES.items() if "cpu-long" in spec.profiles}
    assert have == {"lgnet-table1", "lgnet-ablation", "infnet-protocol"}
    for name in have:
        cpu, long = TABLES[name].profiles["cpu"], TABLES[name].profiles["cpu-long"]
        # a larger budget than cpu, the same everything else, so the two tables compare budgets only
        assert (long.image_size, long.epochs) == (128, 30) and long.image_size > cpu.image_size
        assert long.epochs > cpu.epochs
        assert (long.base_channels, long.lr, long.extra_train, long.model_overrides) == (
            cpu.base_channels,
            cpu.lr,
            cpu.extra_train,
            cpu.model_overrides,
        )
        assert [p for p in table_profiles(TABLES[name]) if p not in ("cpu-paper", "cpu-nnunet")] == [
            "cpu",
            "cpu-long",
            "gpu",
        ]
    assert table_profiles(TABLES["prnet-kaggle"]) == ["cpu", "gpu"]


def test_gpu_profiles_of_the_infection_tables_run_the_paper_preset():
    for name in ("lgnet-table1", "lgnet-ablation", "infnet-protocol"):
        gpu = TABLES[name].profiles["gpu"]
        assert gpu.preset == "paper"
        assert gpu.train_overrides()["preset"] == "paper"
        # the profile's own values are the LG-Net paper's recipe (Adam lr 0.01, batch 4, 120 epochs, base 64)
        assert (gpu.lr, gpu.batch_size, gpu.epochs, gpu.base_channels) == (0.01, 4, 120, 64)
        assert not gpu.model_overrides  # no attention pooling: the paper preset decides the attention
    assert TABLES["lgnet-table1"].profiles["gpu"].image_size == 512
    # Inf-Net's protocol trains at 352²: not the paper's size, so the profile allows it explicitly
    infnet = TABLES["infnet-protocol"].profiles["gpu"]
    assert infnet.image_size == 352 and infnet.extra_train["allow_non_paper_size"] is True
    # the PR-Net paper states no training setting: its table keeps the default preset
    assert TABLES["prnet-kaggle"].profiles["gpu"].preset == "default"
    assert "preset" not in TABLES["prnet-kaggle"].profiles["gpu"].train_overrides()


def test_cpu_paper_profile_is_the_paper_recipe_at_a_cpu_size():
    have = {name for name, spec in TABLES.items() if "cpu-paper" in spec.profiles}
    assert have == {"lgnet-table1"}
    spec = TABLES["lgnet-table1"]
    prof, gpu = spec.profiles["cpu-paper"], spec.profiles["gpu"]
    assert prof.preset == "paper" and prof.extra_train["allow_non_paper_size"] is True
    assert prof.image_size <= 128 and prof.epochs <= 5
    assert (prof.lr, prof.batch_size, prof.base_channels, prof.model_overrides) == (
        gpu.lr,
        gpu.batch_size,
        gpu.base_channels,
        gpu.model_overrides,
    )
    assert table_profiles(spec) == ["cpu", "cpu-long", "cpu-paper", "cpu-nnunet", "gpu"]


def test_lgnet_tables_show_pooled_acc_and_miou_beside_the_means():
    for name in ("lgnet-table1", "lgnet-ablation"):
        assert TABLES[name].pooled_beside == ("acc", "miou")
        assert set(TABLES[name].published.units) == {"acc", "miou"}
    assert TABLES["prnet-kaggle"].pooled_beside == () == TABLES["infnet-protocol"].pooled_beside


def test_validate_spec_checks_the_profiles():
    spec = TABLES["prnet-kaggle"]
    missing = dataclasses.replace(spec, profiles={"cpu": spec.profiles["cpu"]})
    assert f"{spec.name}: no 'gpu' profile" in validate_spec(missing)
    unknown = dataclasses.replace(spec, profiles={**spec.profiles, "tpu": spec.profiles["gpu"]})
    assert any("unknown profile 'tpu'" in p for p in validate_spec(unknown))
    preset = dataclasses.replace(
        spec, profiles={**spec.profiles, "gpu": dataclasses.replace(spec.profiles["gpu"], preset="papr")}
    )
    assert f"{spec.name}/gpu: unknown preset 'papr' (known: default, paper, nnunet)" in validate_spec(preset)
    pooled = dataclasses.replace(spec, pooled_beside=("hd", "miou"))
    problems = validate_spec(pooled)
    assert any("pooled_beside 'hd'" in p for p in problems)  # HD has no pooled value
    assert any("pooled_beside 'miou'" in p for p in problems)  # not a metric of this table


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_input_folder_exists_under_the_shared_data_root(name, shared_data):
    assert TABLES[name].input_dir(shared_data).is_dir()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_row_builds_with_its_kwargs(name):
    spec = TABLES[name]
    for row in spec.rows:
        model = create_model(row.model, base_channels=4, **row.model_kwargs)
        for kw, value in row.model_kwargs.items():
            assert getattr(model, kw) == value


def test_ablation_rows_are_the_lgnet_switches():
    spec = TABLES["lgnet-ablation"]
    switches = [
        (r.model_kwargs["use_mrc"], r.model_kwargs["use_lg_attention"], r.model_kwargs["use_ff"]) for r in spec.rows
    ]
    assert switches == [
        (False, False, False),
        (True, False, False),
        (False, True, False),
        (False, False, True),
        (True, True, True),
    ]
    assert {r.model for r in spec.rows} == {"lgnet"}


def test_medseg_and_covid_semiseg_tables_never_share_data():
    by_dataset = {s.name: s.dataset for s in TABLES.values()}
    assert by_dataset["lgnet-table1"] == by_dataset["lgnet-ablation"] == "medseg"
    assert by_dataset["infnet-protocol"] == "covid-semiseg"


def test_published_numbers_are_only_attached_to_rows_by_label():
    for spec in TABLES.values():
        for row in spec.rows:
            if row.published_as is not None:
                assert row.published_as in spec.published.values


def test_validate_spec_reports_problems():
    spec = TABLES["lgnet-table1"]
    bad = dataclasses.replace(
        spec,
        dataset="nope",
        seeds=(0, 0),
        rows=spec.rows + (Row("Bad Key", "x", "no-such-model"), Row("lgnet2", "x", "lgnet", {"use_nothing": True})),
    )
    problems = "\n".join(validate_spec(bad))
    assert "unknown reader 'nope'" in problems
    assert "at least 3 distinct seeds" in problems
    assert "not file-name safe" in problems
    assert "no-such-model" in problems
    assert "no constructor argument 'use_nothing'" in problems


def test_profile_sizes_fit_the_models_size_divisor():
    bad = dataclasses.replace(TABLES["lgnet-table1"])
    prof = dataclasses.replace(bad.profiles["cpu"], image_size=48)  # SegNet and U²-Net need multiples of 32
    bad = dataclasses.replace(bad, profiles={**bad.profiles, "cpu": prof})
    assert any("size_divisor 32" in p for p in validate_spec(bad))


def test_get_table_unknown_name():
    with pytest.raises(ConfigError, match="unknown table 'nope'"):
        get_table("nope")


def test_slug():
    assert slug("U²-Net (P)") == "u-net-p"
    assert slug("lgnet") == "lgnet"


def test_cpu_nnunet_profile_is_cpus_budget_under_nnunets_recipe():
    """Issue #25: the nnU-Net preset at the ``cpu`` profile's size, width, epochs and batch, with as
    many batches per epoch as a ``cpu`` epoch (ceil of the training slices the committed ``cpu``
    records trained on, over the batch), the preset's own loss; its deviations are epochs and
    iterations, and lungseg's precise BN (on by default, recorded since the review of #25)."""
    import json
    import math
    from pathlib import Path

    from lungseg.experiments import runner
    from lungseg.training.presets import resolve_preset

    have = {name for name, spec in TABLES.items() if "cpu-nnunet" in spec.profiles}
    assert have == {"lgnet-table1", "infnet-protocol"}
    root = Path(__file__).resolve().parents[2] / "docs" / "results"
    for name in sorted(have):
        spec = TABLES[name]
        cpu, nn = spec.profiles["cpu"], spec.profiles["cpu-nnunet"]
        assert nn.preset == "nnunet" and nn.lr == 0.01  # nnU-Net's initial lr: written, no deviation
        assert (nn.image_size, nn.base_channels, nn.epochs, nn.batch_size, nn.model_overrides) == (
            cpu.image_size,
            cpu.base_channels,
            cpu.epochs,
            cpu.batch_size,
            cpu.model_overrides,
        )
        record = json.loads((root / name / "cpu" / "unet-seed0.json").read_text(encoding="utf-8"))
        n_train = record["data"]["counts"]["train"]
        assert nn.extra_train == {"iterations_per_epoch": math.ceil(n_train / cpu.batch_size)}
        for row in spec.rows:
            params = runner.build_params(spec, row, nn, seed=0, device="cpu")
            result = resolve_preset(params.train)
            assert set(result.deviations) == {"epochs", "iterations_per_epoch", "precise_bn"}, row.key
            assert result.config.loss == "bce_dice" and result.config.augment == "nnunet"
