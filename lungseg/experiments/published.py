"""The papers' own numbers, quoted exactly as printed in the source (units as the source gives them).

Data, not code: :mod:`lungseg.experiments.specs` attaches each block to its table, and the report
renders it only ever in separate, labelled ``paper†`` columns. These numbers never enter the
aggregation of our runs.
"""

from __future__ import annotations

from lungseg.experiments.tables import Published

LGNET_PAPER = (
    "LG-Net (Chinese, improved U-Net for lung CT infection segmentation), `../shared/seeds/000_a63c139867e588ca.txt`"
)
LGNET_DATA = (
    "6 804 slices: MedSeg 'COVID-19 CT segmentation dataset' (100 slices, 20 patients) + "
    "'COVID-19 CT Segmentation dataset nr. 2' (Radiopaedia); split not stated; 512², Adam lr 0.01, "
    "batch 4, 120 epochs, RTX 3080 Ti"
)
#: why the LG-Net tables compare the paper's ACC/mIoU with our pooled values
LGNET_AGGREGATION = (
    "ACC (Eq. 17) and mIoU (Eq. 18) are written in the paper with one TP/FP/TN/FN over the test set, i.e. "
    "dataset-level (pooled) figures; the paper's columns are therefore compared with our *pooled* ACC and "
    "mIoU, shown beside our per-image means."
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
        LGNET_AGGREGATION,
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
        LGNET_AGGREGATION,
    ),
)

INFNET_TABLE = Published(
    source="Inf-Net (Fan et al., IEEE TMI 2020), Table II, as quoted in `../shared/data/README.md`",
    where="Table II, binary infection, COVID-SemiSeg 48 test slices",
    data=(
        "COVID-SemiSeg: 50 train / 48 test slices (the same protocol as ours); "
        "Inf-Net's code trains at 352² with an ImageNet-pretrained backbone"
    ),
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
