#!/usr/bin/env python3
"""Write a demo BIDS dataset for ivim_bids.py from the bundled test data (test_data/dwi_rl.nii.gz).

FOLDER/raw: sub-01..03, sessions 1 and 2, each DWI the test DWI shifted in-plane by a few voxels
(different per scan), with seeded Gaussian noise added (SD 2 % of the median cord signal at the
lowest b), sub-03 ses-2 scaled by 1.6 (an S0 outlier for the group report); the b-values once at
the top (acq-ivim_dwi.bval, inherited by every DWI), a dataset-level dwi.json, participants.tsv.
sub-04 is broken: its ses-1 DWI is a truncated file, its ses-2 has a .bval of 10 values for 11
volumes.  FOLDER/cordseg: a derivatives dataset with each DWI's cord mask (desc-cord_mask) and a
segmentation (dseg: 1 cord, 2 the rest within 8 voxels of it) with its dseg.tsv.

example:
  python bench/make_demo_bids.py /tmp/demo
  ivim_bids.py /tmp/demo/raw /tmp/demo/raw/derivatives/ivim participant -j 2
  ivim_bids.py /tmp/demo/raw /tmp/demo/raw/derivatives/ivim group --dseg-dir /tmp/demo/cordseg
"""
import argparse
import json
import os
import shutil

import nibabel as nib
import numpy as np
from scipy import ndimage

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_DATA = os.path.join(HERE, "..", "test_data")
SHIFTS = {("01", "1"): (0, 0), ("01", "2"): (2, -1), ("02", "1"): (-3, 2), ("02", "2"): (1, 3),
          ("03", "1"): (4, -2), ("03", "2"): (-2, -3)}


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    raw, deriv = os.path.join(args.folder, "raw"), os.path.join(args.folder, "cordseg")
    if os.path.exists(args.folder):
        parser.error(f"{args.folder} exists")
    rng = np.random.default_rng(args.seed)
    image = nib.load(os.path.join(TEST_DATA, "dwi_rl.nii.gz"))
    dwi = image.get_fdata(dtype=np.float32)
    cord = nib.load(os.path.join(TEST_DATA, "cord_seg_dilated.nii.gz")).get_fdata() > 0
    bvals = open(os.path.join(TEST_DATA, "bval_rl.txt")).read()
    lowest = dwi[..., 0][cord]
    sigma = 0.02 * float(np.median(lowest))

    write(os.path.join(raw, "dataset_description.json"),
          json.dumps({"Name": "ivim-toolbox demo (from test_data/dwi_rl.nii.gz)", "BIDSVersion": "1.10.0"}, indent=2))
    write(os.path.join(raw, "acq-ivim_dwi.bval"), bvals)
    write(os.path.join(raw, "dwi.json"), json.dumps({"MagneticFieldStrength": 7, "Manufacturer": "Siemens",
                                                     "EchoTime": 0.066, "RepetitionTime": 2.5}, indent=2))
    write(os.path.join(raw, "participants.tsv"), "participant_id\tage\n" + "".join(
        f"sub-{s}\t{30 + int(s)}\n" for s in ("01", "02", "03", "04")))
    write(os.path.join(deriv, "dataset_description.json"),
          json.dumps({"Name": "cord segmentation", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
                      "GeneratedBy": [{"Name": "make_demo_bids.py"}]}, indent=2))
    write(os.path.join(deriv, "dseg.tsv"), "index\tname\n1\tcord\n2\tsurround\n")
    surround = ndimage.binary_dilation(cord, iterations=8, structure=np.ones((3, 3, 1))) & ~cord
    for (sub, ses), (dx, dy) in SHIFTS.items():
        name = f"sub-{sub}_ses-{ses}_acq-ivim"
        data = np.roll(dwi, (dx, dy), axis=(0, 1)) + rng.normal(0, sigma, dwi.shape).astype(np.float32)
        data = np.abs(data) * (1.6 if (sub, ses) == ("03", "2") else 1.0)
        folder = os.path.join(raw, f"sub-{sub}", f"ses-{ses}", "dwi")
        os.makedirs(folder, exist_ok=True)
        nib.save(nib.Nifti1Image(data.astype(np.float32), image.affine, image.header),
                 os.path.join(folder, f"{name}_dwi.nii.gz"))
        seg_folder = os.path.join(deriv, f"sub-{sub}", f"ses-{ses}", "dwi")
        os.makedirs(seg_folder, exist_ok=True)
        shifted = [np.roll(m, (dx, dy), axis=(0, 1)) for m in (cord, surround)]
        nib.save(nib.Nifti1Image(shifted[0].astype(np.uint8), image.affine),
                 os.path.join(seg_folder, f"{name}_desc-cord_mask.nii.gz"))
        nib.save(nib.Nifti1Image((shifted[0] + 2 * shifted[1]).astype(np.uint8), image.affine),
                 os.path.join(seg_folder, f"{name}_dseg.nii.gz"))
    broken = os.path.join(raw, "sub-04", "ses-1", "dwi", "sub-04_ses-1_acq-ivim_dwi.nii.gz")
    os.makedirs(os.path.dirname(broken))
    shutil.copy(os.path.join(raw, "sub-01", "ses-1", "dwi", "sub-01_ses-1_acq-ivim_dwi.nii.gz"), broken)
    with open(broken, "r+b") as f:
        f.truncate(os.path.getsize(broken) // 2)
    folder = os.path.join(raw, "sub-04", "ses-2", "dwi")
    os.makedirs(folder)
    shutil.copy(os.path.join(raw, "sub-01", "ses-2", "dwi", "sub-01_ses-2_acq-ivim_dwi.nii.gz"),
                os.path.join(folder, "sub-04_ses-2_acq-ivim_dwi.nii.gz"))
    write(os.path.join(folder, "sub-04_ses-2_acq-ivim_dwi.bval"), " ".join(bvals.split()[:10]) + "\n")
    print(f"wrote {raw} and {deriv}")


if __name__ == "__main__":
    main()
