"""Build a small cohort folder for ``lungseg predict --input FOLDER`` from the real data in the repository.

    python scripts/make_cohort.py --output predictions/cohort-input [--dicom ../shared/data/lungmask-dicom]

Cases: the bundled MedSeg sample (``data/sample/medseg-covid100/tr_im``, 8-bit slices as the dataset's authors windowed
them) cut into three NIfTI volumes of consecutive slices (``medseg_1.nii.gz`` …), stored as uint8 — their
true domain — with a RAS affine and the spacing given by ``--spacing`` (MedSeg publishes none: the default
0.7 × 0.7 × 5 mm is a typical chest CT, stated in each file's header and so in every report); plus, with
``--dicom``, a real DICOM series copied as a sub-folder. Refuses an existing non-empty ``--output``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def build(
    output: Path, *, sample: Path, spacing: tuple[float, float, float], cases: int, dicom: Path | None
) -> list[Path]:
    import nibabel as nib
    from PIL import Image

    if output.exists() and any(output.iterdir()):
        raise SystemExit(f"error: {output}: exists and is not empty")
    pngs = sorted(sample.glob("*.png"))
    if len(pngs) < cases:
        raise SystemExit(f"error: {sample}: {len(pngs)} slices, fewer than {cases} cases")
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for i, chunk in enumerate(np.array_split(np.arange(len(pngs)), cases), start=1):
        zyx = np.stack([np.asarray(Image.open(pngs[j]).convert("L")) for j in chunk])  # (z, rows, cols) uint8
        # rows anterior→posterior, columns patient's right→left (radiological) → RAS voxel axes (x, y, z)
        xyz = np.ascontiguousarray(np.flip(np.transpose(zyx, (2, 1, 0)), axis=(0, 1)))
        img = nib.Nifti1Image(xyz, np.diag([spacing[1], spacing[0], spacing[2], 1.0]))
        img.set_data_dtype(np.uint8)
        img.header.set_xyzt_units("mm")
        path = output / f"medseg_{i}.nii.gz"
        nib.save(img, path)
        written.append(path)
    if dicom is not None:
        target = output / dicom.name
        shutil.copytree(dicom, target)
        for p in target.rglob("*"):
            p.chmod(0o644 if p.is_file() else 0o755)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--sample", type=Path, default=REPO / "data" / "sample" / "medseg-covid100" / "tr_im")
    p.add_argument("--spacing", type=float, nargs=3, default=(0.7, 0.7, 5.0), metavar=("ROW", "COL", "SLICE"))
    p.add_argument("--cases", type=int, default=3)
    p.add_argument("--dicom", type=Path, default=None, help="a DICOM series folder to add as one more case")
    args = p.parse_args(argv)
    for path in build(args.output, sample=args.sample, spacing=tuple(args.spacing), cases=args.cases, dicom=args.dicom):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
