"""Declarative specs of the papers' comparison tables, re-run through lungseg's own code.

A :class:`TableSpec` says *what* to run: the dataset (a reader name from
:data:`lungseg.data.readers.READERS` and the input folder **relative to a data root** that the
caller passes, e.g. ``--data-root ../shared/data``), the rows (a label, a model name from
:func:`lungseg.models.list_models` and its constructor kwargs, e.g. LG-Net's ablation switches),
the metrics to report, the seeds, and the settings of each profile:

``cpu``
    Shrunk so a whole table fits in minutes on 2 CPU cores (small images, base width 8, a handful
    of epochs). Every shrunk setting is written next to the table in ``docs/results.md``.
``cpu-long``
    Twice the CPU profile's resolution and 1.5× its epochs (128², 30 epochs, base 8), for the infection
    tables only: it asks whether a finding of the ``cpu`` profile survives a larger budget that still
    fits about an hour on 2 cores. The lung-field table has no such profile (its 64 px set cannot grow,
    and all its rows already reach 93–97 % Dice at the ``cpu`` budget).
``gpu``
    The papers' sizes where the paper states them (LG-Net: 512², U-Net widths = base 64,
    Adam lr 0.01, batch 4, 120 epochs). A run may override single settings (e.g. fewer epochs to
    fit a device budget); the override is stored in every run record and shown in the report.

The papers' own numbers are kept in :class:`Published` blocks, exactly as printed in the source
(units as the source gives them), and are only ever rendered in separate, labelled columns: they
never enter the aggregation of our runs.

Default data root: ``<repo>/../shared/data`` (:data:`DEFAULT_DATA_ROOT`, overridable with the
``LUNGSEG_SHARED_DATA`` environment variable or ``--data-root``); it is a default, never baked into
a spec.

Split note: the data split is fixed per dataset (``preprocess.seed`` = 0, the reader's published
test split); the run seed changes only model initialisation, augmentation and batch order, so the
± in our tables is training variance on one split, not split variance.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
#: documented default: the shared real datasets beside the checkout (``../shared/data``)
DEFAULT_DATA_ROOT = Path(os.environ.get("LUNGSEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
#: where the per-run JSON records live (``<results>/<table>/<profile>/<row>-seed<k>.json``)
DEFAULT_RESULTS_DIR = REPO_ROOT / "docs" / "results"
DEFAULT_REPORT = REPO_ROOT / "docs" / "results.md"

#: every profile a table may define, in report order
PROFILES = ("cpu", "cpu-long", "gpu")
#: the profiles every table must define
REQUIRED_PROFILES = ("cpu", "gpu")


@dataclass(frozen=True)
class Metric:
    """One reported metric: ``name`` is the key stem of ``lungseg.metrics.aggregate``
    (``<name>_mean`` = mean over test images, ``<name>_pooled`` = from summed confusion counts)."""

    name: str
    label: str
    scale: float = 1.0
    """Multiply before printing (100 → percent)."""
    digits: int = 3
    higher_is_better: bool = True
    unit: str = ""

    def header(self) -> str:
        arrow = "↑" if self.higher_is_better else "↓"
        unit = f" ({self.unit})" if self.unit else ""
        return f"{self.label}{unit} {arrow}"


@dataclass(frozen=True)
class Row:
    key: str
    """File-name-safe id of the row (``docs/results/<table>/<profile>/<key>-seed<k>.json``)."""
    label: str
    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    published_as: str | None = None
    """Label of the matching row in :attr:`TableSpec.published`, if the paper reports this model."""


@dataclass(frozen=True)
class Profile:
    image_size: int
    base_channels: int
    epochs: int
    batch_size: int = 4
    lr: float = 1e-3
    extra_train: dict[str, Any] = field(default_factory=dict)
    """Further ``train`` overrides (e.g. ``augment``, ``scheduler``, ``early_stopping_patience``)."""
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model name, constructor kwargs this profile adds to every row of that model
    (e.g. ``{"lgnet": {"max_tokens": 256}}``); a row's own kwargs win."""
    note: str = ""

    def model_kwargs(self, row: Row) -> dict[str, Any]:
        """The constructor kwargs a run of ``row`` under this profile uses."""
        return {**self.model_overrides.get(row.model, {}), **row.model_kwargs}

    def train_overrides(self) -> dict[str, Any]:
        return {
            "base_channels": self.base_channels, "epochs": self.epochs, "batch_size": self.batch_size,
            "lr": self.lr, **self.extra_train,
        }


@dataclass(frozen=True)
class Published:
    """A paper's table, quoted as printed. ``values[row_label][metric_name]`` in ``units[metric_name]``."""

    source: str
    where: str
    data: str
    """What the paper trained/tested on (it differs from ours: say how)."""
    values: dict[str, dict[str, float]]
    units: dict[str, str]
    """Per metric: how the paper prints it, e.g. ``"%"``, ``"fraction"``, ``"mm"``."""
    caveats: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    dataset: str
    """Reader name (``lungseg preprocess --dataset``)."""
    input_subdir: str
    """Raw input folder relative to the data root."""
    rows: tuple[Row, ...]
    metrics: tuple[Metric, ...]
    profiles: dict[str, Profile]
    seeds: tuple[int, ...] = (0, 1, 2)
    published: Published | None = None
    notes: tuple[str, ...] = ()

    def row(self, key: str) -> Row:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(f"table {self.name!r} has no row {key!r} (rows: {', '.join(r.key for r in self.rows)})")

    def input_dir(self, data_root: str | Path) -> Path:
        return Path(data_root) / self.input_subdir


# ------------------------------------------------------------------------------------ metrics

ACC = Metric("acc", "ACC", 100, 1, unit="%")
MIOU = Metric("miou", "mIoU", 100, 1, unit="%")
DICE = Metric("dice", "Dice", 100, 1, unit="%")
IOU = Metric("iou", "IoU", 100, 1, unit="%")
HD95_PX = Metric("hd95", "HD95", 1, 2, higher_is_better=False, unit="px")
HD_PX = Metric("hd", "HD", 1, 2, higher_is_better=False, unit="px")
MAE = Metric("mae", "MAE", 1, 4, higher_is_better=False)
SPE = Metric("spe", "SPE", 100, 1, unit="%")
# Inf-Net prints fractions
DICE_F = Metric("dice", "Dice", 1, 3)
SEN_F = Metric("sen", "SEN", 1, 3)
SPE_F = Metric("spe", "SPE", 1, 3)

# ------------------------------------------------------------------------------------ papers

LGNET_PAPER = "LG-Net (Chinese, improved U-Net for lung CT infection segmentation), `../shared/seeds/000_a63c139867e588ca.txt`"
LGNET_DATA = (
    "6 804 slices: MedSeg 'COVID-19 CT segmentation dataset' (100 slices, 20 patients) + "
    "'COVID-19 CT Segmentation dataset nr. 2' (Radiopaedia); split not stated; 512², Adam lr 0.01, "
    "batch 4, 120 epochs, RTX 3080 Ti"
)
LGNET_TABLE1 = Published(
    source=LGNET_PAPER,
    where="表1 / Tab. 1 (不同网络的病灶分割结果)",
    data=LGNET_DATA,
    values={
        "SegNet": {"acc": 78.8, "miou": 68.8},
        "U²-Net": {"acc": 81.2, "miou": 76.9},
        "LG-Net": {"acc": 91.5, "miou": 80.3},
    },
    units={"acc": "%", "miou": "%"},
    caveats=(
        "The paper's Table 1 has no U-Net row; its U-Net number (77.8 / 69.8) is in the ablation table.",
        "On MedSeg 90–95 % of the pixels are background, so predicting no infection at all already scores "
        "about that pixel ACC (Eq. 17) here; the paper's 78.8–91.5 % on its larger set therefore points to a "
        "different aggregation or data composition, which the paper does not state.",
    ),
)
LGNET_TABLE2 = Published(
    source=LGNET_PAPER,
    where="表2 / Tab. 2 (消融实验结果)",
    data=LGNET_DATA,
    values={
        "U-Net (baseline)": {"acc": 77.8, "miou": 69.8},
        "+MRC": {"acc": 84.9, "miou": 74.6},
        "+LG-Attention": {"acc": 89.7, "miou": 76.1},
        "+FF": {"acc": 86.6, "miou": 75.4},
        "all (LG-Net)": {"acc": 91.5, "miou": 80.3},
    },
    units={"acc": "%", "miou": "%"},
    caveats=(
        "The PDF text extraction lost the check-mark columns of rows 3–4; they are read here as "
        "'U-Net + that one module', as the paper's text describes each module's gain over U-Net.",
    ),
)
INFNET_TABLE = Published(
    source="Inf-Net (Fan et al., IEEE TMI 2020), Table II, as quoted in `../shared/data/README.md`",
    where="Table II, binary infection, COVID-SemiSeg 48 test slices",
    data="COVID-SemiSeg: 50 train / 48 test slices (the same protocol as ours); Inf-Net's code trains at 352² with an ImageNet-pretrained backbone",
    values={
        "U-Net": {"dice": 0.439, "sen": 0.534, "spe": 0.858},
        "Attention-UNet": {"dice": 0.583, "sen": 0.637, "spe": 0.921},
        "U-Net++": {"dice": 0.581, "sen": 0.672, "spe": 0.902},
        "Inf-Net": {"dice": 0.682, "sen": 0.692, "spe": 0.943},
        "Semi-Inf-Net": {"dice": 0.739, "sen": 0.725, "spe": 0.960},
    },
    units={"dice": "fraction", "sen": "fraction", "spe": "fraction"},
    caveats=(
        "Quoted from the data README ('as widely quoted'); the Inf-Net paper itself is not in this "
        "repository, so these figures were not re-checked against the original table.",
        "Inf-Net is in lungseg's zoo (`infnet`, trained from scratch: no pretrained backbone can be "
        "downloaded here) but not run in this table; Semi-Inf-Net (pseudo-label semi-supervision) is not "
        "implemented: published rows only.",
    ),
)
PRNET_TABLE = Published(
    source="PR-Net (Chinese, residual U-Net with progressive attention), `../shared/seeds/001_1629151eb43ef42a.txt`",
    where="Table 1 / 表1 (Comparison with different models)",
    data="'264 lung CT images' (the Kaggle lung-field set) split 211 / 26 / 27; resolution not stated; HD in mm",
    values={
        "UNet": {"iou": 97.16, "hd": 5.62, "dice": 98.55, "mae": 0.0061, "acc": 99.38, "spe": 99.71},
        "UNet++": {"iou": 97.18, "hd": 5.54, "dice": 98.56, "mae": 0.0058, "acc": 99.41, "spe": 99.52},
        "Attention_UNet": {"iou": 97.47, "hd": 5.37, "dice": 98.72, "mae": 0.0054, "acc": 99.45, "spe": 99.72},
        "AnamNet": {"iou": 97.01, "hd": 5.65, "dice": 98.48, "mae": 0.0063, "acc": 99.37, "spe": 99.65},
        "AwsNet": {"iou": 97.38, "hd": 5.39, "dice": 98.67, "mae": 0.0056, "acc": 99.44, "spe": 99.68},
        "LightUNet": {"iou": 97.47, "hd": 5.32, "dice": 98.72, "mae": 0.0054, "acc": 99.46, "spe": 99.70},
        "Inf-Net": {"iou": 97.18, "hd": 5.43, "dice": 98.57, "mae": 0.0060, "acc": 99.38, "spe": 99.65},
        "Ours (PR-Net)": {"iou": 97.71, "hd": 5.07, "dice": 98.84, "mae": 0.0049, "acc": 99.51, "spe": 99.78},
    },
    units={"iou": "%", "hd": "mm", "dice": "%", "mae": "fraction", "acc": "%", "spe": "%"},
    caveats=(
        "The paper calls the set '264 lung nodule CT images'; the masks are lung fields, not nodules.",
        "Its HD is in mm at an unstated resolution; ours is in pixels of the 64×64 images (the "
        "64 px npy files carry no spacing), so the HD columns are not comparable.",
    ),
)

# ------------------------------------------------------------------------------------ tables

#: CPU profiles: the O(N²) attentions of LG-Net and PR-Net are pooled to at most 16×16 tokens (the
#: default 4096 = 64×64 tokens trains at ~2 img/s on 2 cores at 64², 256 at ~30–40 img/s). At a 64²
#: input that pools the first skip 4× per side, the same ratio as the default at 256².
CPU_ATTENTION = {"lgnet": {"max_tokens": 256}, "prnet": {"max_tokens": 256}}
#: One loss for every row of a table, so a table compares architectures, not losses: the LG-Net
#: paper's Dice+Focal for the infection tables (with ``loss: auto`` the baselines would get BCE+Dice,
#: which at the CPU budget left SegNet at Dice ≈ 0 while LG-Net learned), BCE+Dice (PR-Net's
#: default) for the Kaggle lung fields.
INFECTION_LOSS = {"loss": "dice_focal"}
LUNG_LOSS = {"loss": "bce_dice"}
_MEDSEG_CPU = Profile(image_size=64, base_channels=8, epochs=20, batch_size=4, lr=1e-3, model_overrides=CPU_ATTENTION,
                      extra_train=INFECTION_LOSS,
                      note="64² instead of 512², base 8 instead of 64, 20 epochs instead of 120, lr 1e-3 instead of 0.01, "
                           "attention max_tokens 256 instead of 4096")
#: 128² with the same 256-token attention cap: LG-Net's first skip is pooled 8× per side instead of 4×
#: (1024 tokens would keep the ratio but costs ~2.7× per step on 2 cores: 1.7 s vs 0.63 s, batch 4).
_CPU_LONG_NOTE = ("128² instead of {paper}, base 8 instead of 64, 30 epochs instead of {epochs}, lr 1e-3, "
                  "attention max_tokens 256 instead of 4096{extra}")
_MEDSEG_CPU_LONG = Profile(image_size=128, base_channels=8, epochs=30, batch_size=4, lr=1e-3,
                           model_overrides=CPU_ATTENTION, extra_train=INFECTION_LOSS,
                           note=_CPU_LONG_NOTE.format(paper="512²", epochs="120", extra=""))
_MEDSEG_GPU = Profile(image_size=512, base_channels=64, epochs=120, batch_size=4, lr=1e-2, extra_train=INFECTION_LOSS,
                      note="the LG-Net paper's setup: 512², U-Net widths (base 64), Adam lr 0.01, batch 4, 120 epochs")

TABLES: dict[str, TableSpec] = {}


def _register(spec: TableSpec) -> TableSpec:
    TABLES[spec.name] = spec
    return spec


_register(TableSpec(
    name="lgnet-table1",
    title="LG-Net Table 1: LG-Net vs U-Net, SegNet, U²-Net on MedSeg COVID-19 (infection)",
    dataset="medseg",
    input_subdir="medseg-covid100",
    rows=(
        Row("lgnet", "LG-Net", "lgnet", {}, published_as="LG-Net"),
        Row("unet", "U-Net", "unet"),
        Row("segnet", "SegNet", "segnet", published_as="SegNet"),
        Row("u2net_p", "U²-Net (U²-Net-P)", "u2net_p", published_as="U²-Net"),
    ),
    metrics=(ACC, MIOU, DICE, IOU, HD95_PX),
    profiles={"cpu": _MEDSEG_CPU, "cpu-long": _MEDSEG_CPU_LONG, "gpu": _MEDSEG_GPU},
    published=LGNET_TABLE1,
    notes=(
        "Test = the 20 slices of the JCS test.txt; train/val = the other 80 slices, slice-level split "
        "(no patient ids), so neighbouring slices of one patient can sit in train and test.",
        "The JCS train.txt contains all 20 test slices; the data layer uses them as test only.",
    ),
))

_register(TableSpec(
    name="lgnet-ablation",
    title="LG-Net Table 2 (ablation): U-Net + each module, on MedSeg COVID-19 (infection)",
    dataset="medseg",
    input_subdir="medseg-covid100",
    rows=(
        Row("base", "U-Net (LG-Net, all modules off)", "lgnet",
            {"use_mrc": False, "use_lg_attention": False, "use_ff": False}, published_as="U-Net (baseline)"),
        Row("mrc", "+MRC", "lgnet", {"use_mrc": True, "use_lg_attention": False, "use_ff": False}, published_as="+MRC"),
        Row("lga", "+LG-Attention", "lgnet", {"use_mrc": False, "use_lg_attention": True, "use_ff": False},
            published_as="+LG-Attention"),
        Row("ff", "+FF", "lgnet", {"use_mrc": False, "use_lg_attention": False, "use_ff": True}, published_as="+FF"),
        Row("all", "all (LG-Net)", "lgnet", {"use_mrc": True, "use_lg_attention": True, "use_ff": True},
            published_as="all (LG-Net)"),
    ),
    metrics=(ACC, MIOU, DICE, IOU, HD95_PX),
    profiles={"cpu": _MEDSEG_CPU, "cpu-long": _MEDSEG_CPU_LONG, "gpu": _MEDSEG_GPU},
    published=LGNET_TABLE2,
    notes=("Every row is the same `lgnet` class with the switches `use_mrc/use_lg_attention/use_ff`; "
           "all off is the plain U-Net frame of LG-Net (bilinear up-sampling decoder).",),
))

_register(TableSpec(
    name="infnet-protocol",
    title="Inf-Net protocol: COVID-SemiSeg, train on the 50 TrainingSet slices, test on the 48 TestingSet slices",
    dataset="covid-semiseg",
    input_subdir="covid-semiseg",
    rows=(
        Row("lgnet", "LG-Net", "lgnet"),
        Row("prnet", "PR-Net", "prnet"),
        Row("unet", "U-Net", "unet", published_as="U-Net"),
        Row("attention_unet", "Attention U-Net", "attention_unet", published_as="Attention-UNet"),
        Row("unetpp", "UNet++", "unetpp", published_as="U-Net++"),
    ),
    metrics=(DICE_F, SEN_F, SPE_F, Metric("iou", "IoU", 1, 3), Metric("hd95", "HD95", 1, 2, False, "px")),
    profiles={
        "cpu": Profile(image_size=64, base_channels=8, epochs=20, batch_size=4, lr=1e-3, model_overrides=CPU_ATTENTION,
                       extra_train=INFECTION_LOSS,
                       note="64² instead of Inf-Net's 352², base 8, 20 epochs, attention max_tokens 256, no pretrained backbone"),
        "cpu-long": Profile(image_size=128, base_channels=8, epochs=30, batch_size=4, lr=1e-3,
                            model_overrides=CPU_ATTENTION, extra_train=INFECTION_LOSS,
                            note=_CPU_LONG_NOTE.format(paper="Inf-Net's 352²", epochs="100 (our gpu profile)",
                                                       extra=", no pretrained backbone")),
        "gpu": Profile(image_size=352, base_channels=64, epochs=100, batch_size=4, lr=1e-3, extra_train=INFECTION_LOSS,
                       note="Inf-Net's training size 352², U-Net widths (base 64), 100 epochs (our choice)"),
    },
    published=INFNET_TABLE,
    notes=(
        "Val (for the best-epoch checkpoint) is carved from the 50 training slices, so the models see fewer "
        "than 50 training slices.",
        "Same 100 slices as MedSeg: nothing trained here is evaluated on MedSeg or vice versa.",
        "Slices are cropped to the lungs at varying sizes (~158–507 px) and resized to a square.",
    ),
))

_register(TableSpec(
    name="prnet-kaggle",
    title="PR-Net Table 1: PR-Net vs baselines on the Kaggle lung-field CT slices (64 px)",
    dataset="kaggle-64",
    input_subdir="kaggle-lungs/64px",
    rows=(
        Row("prnet", "PR-Net", "prnet", published_as="Ours (PR-Net)"),
        Row("unet", "U-Net", "unet", published_as="UNet"),
        Row("unetpp", "UNet++", "unetpp", published_as="UNet++"),
        Row("attention_unet", "Attention U-Net", "attention_unet", published_as="Attention_UNet"),
        Row("lgnet", "LG-Net", "lgnet"),
        Row("anamnet", "AnamNet", "anamnet", published_as="AnamNet"),
        Row("awsnet", "AWSnet", "awsnet", published_as="AwsNet"),
        Row("lightunet", "LightUNet", "lightunet", published_as="LightUNet"),
        Row("infnet", "Inf-Net (from scratch)", "infnet", published_as="Inf-Net"),
    ),
    metrics=(IOU, HD_PX, DICE, MAE, ACC, SPE),
    profiles={
        "cpu": Profile(image_size=64, base_channels=8, epochs=8, batch_size=8, lr=1e-3, model_overrides=CPU_ATTENTION,
                       extra_train=LUNG_LOSS,
                       note="64² (the only resolution of the npy set), base 8, 8 epochs, attention max_tokens 256"),
        "gpu": Profile(image_size=64, base_channels=64, epochs=100, batch_size=8, lr=1e-3, extra_train=LUNG_LOSS,
                       note="64² (the only resolution of the npy set), U-Net widths (base 64), 100 epochs (our choice: the PR-Net paper states none)"),
    },
    published=PRNET_TABLE,
    notes=(
        "Split: the source repository's 213 / 54 (train pool / test); val carved from the 213, "
        "slice-level (no patient ids). The paper used 211 / 26 / 27 of 264 images.",
        "Inf-Net and AWSnet train on all their outputs (deep supervision: Inf-Net's five maps incl. the edge "
        "map with equal weights; AWSnet's four fine maps with the authors' initial weights, not the "
        "reinforcement-learning search, plus its coarse stage); metrics are on the main output. Inf-Net's "
        "Res2Net backbone is trained from scratch (the paper: ImageNet-pretrained).",
    ),
))


def table_profiles(spec: TableSpec) -> list[str]:
    """The profiles ``spec`` defines, in :data:`PROFILES` (report) order."""
    return [p for p in PROFILES if p in spec.profiles]


def get_table(name: str) -> TableSpec:
    from lungseg.errors import ConfigError

    if name not in TABLES:
        raise ConfigError(f"unknown table {name!r} (valid: {', '.join(TABLES)})")
    return TABLES[name]


def slug(text: str) -> str:
    """File-name-safe form of ``text`` (lower case, ``[a-z0-9_-]``)."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9_-]+", "-", text.lower())).strip("-")


def validate_spec(spec: TableSpec) -> list[str]:
    """Problems with ``spec`` against the installed model zoo and readers (empty = valid)."""
    from lungseg.data.readers import READERS
    from lungseg.models import list_models, model_class

    problems = []
    models = list_models()
    if spec.dataset not in READERS:
        problems.append(f"{spec.name}: unknown reader {spec.dataset!r}")
    if len(spec.seeds) < 3 or len(set(spec.seeds)) != len(spec.seeds):
        problems.append(f"{spec.name}: needs at least 3 distinct seeds, has {spec.seeds}")
    keys = [r.key for r in spec.rows]
    if len(set(keys)) != len(keys):
        problems.append(f"{spec.name}: duplicate row keys {keys}")
    for r in spec.rows:
        if slug(r.key) != r.key:
            problems.append(f"{spec.name}: row key {r.key!r} is not file-name safe")
        if r.model not in models:
            problems.append(f"{spec.name}/{r.key}: model {r.model!r} not in list_models() {models}")
            continue
        import inspect

        params = inspect.signature(model_class(r.model).__init__).parameters
        kws = set(r.model_kwargs)
        for prof in spec.profiles.values():
            kws |= set(prof.model_kwargs(r))
        for kw in sorted(kws):
            if kw not in params:
                problems.append(f"{spec.name}/{r.key}: {r.model} has no constructor argument {kw!r}")
        if r.published_as is not None and (spec.published is None or r.published_as not in spec.published.values):
            problems.append(f"{spec.name}/{r.key}: published_as {r.published_as!r} not in the published table")
    for pname in REQUIRED_PROFILES:
        if pname not in spec.profiles:
            problems.append(f"{spec.name}: no {pname!r} profile")
    for pname, prof in spec.profiles.items():
        if pname not in PROFILES:
            problems.append(f"{spec.name}: unknown profile {pname!r} (known: {', '.join(PROFILES)})")
            continue
        for r in spec.rows:
            if r.model in models:
                div = getattr(model_class(r.model), "size_divisor", 16)
                if prof.image_size % div:
                    problems.append(f"{spec.name}/{pname}: image_size {prof.image_size} not a multiple of "
                                    f"{r.model}'s size_divisor {div}")
    if spec.published is not None:
        names = {m.name for m in spec.metrics}
        for label, vals in spec.published.values.items():
            extra = set(vals) - names
            if extra:
                problems.append(f"{spec.name}: published row {label!r} has metrics {sorted(extra)} we do not report")
            missing_units = set(vals) - set(spec.published.units)
            if missing_units:
                problems.append(f"{spec.name}: published metrics {sorted(missing_units)} have no unit")
    return problems
