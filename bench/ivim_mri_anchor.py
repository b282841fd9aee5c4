"""Run ivim-mri's Bayesian fit (``ivim.fit.bayes``, MCMC) on a phantom: the anchor of
bench/bench_spatial.py, run by it in ivim-mri's own environment (it pins numpy < 2, so it is not
a dependency of the toolbox):

    /tmp/ivimmri/bin/python bench/ivim_mri_anchor.py IN.npz OUT.npz

IN.npz: signal (x, y, z, n_b), mask (x, y, z), bvals (n_b,), spatial (bool), seed.  OUT.npz: D, f,
Dstar_p (x, y, z; NaN outside the mask) and cpu_s.  ivim-mri's 'diffusive' model is
S = S0·((1 − f)·e^(−bD) + f·e^(−b(D* + Db))), Db = 1.75e-3 mm²/s (blood's diffusivity, its
ivim.constants.Db): its D* is in excess of Db, so the perfusing pool's D*ₚ = D* + Db.  Its
spatial prior ties each voxel to its 4 in-plane neighbours.  Its draws come from numpy's global
random state, seeded here.
"""
import os
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
from ivim import constants
from ivim.fit import bayes


def main(src, dst):
    data = np.load(src, allow_pickle=False)
    np.random.seed(int(data["seed"]))
    with tempfile.TemporaryDirectory() as tmp:
        im, bval, roi = (os.path.join(tmp, name) for name in ("dwi.nii.gz", "dwi.bval", "roi.nii.gz"))
        nib.save(nib.Nifti1Image(data["signal"].astype(np.float32), np.eye(4)), im)
        nib.save(nib.Nifti1Image(data["mask"].astype(np.uint8), np.eye(4)), roi)
        np.savetxt(bval, data["bvals"][None], fmt="%g")
        t0 = time.process_time()
        bayes(im, bval, "diffusive", roi_file=roi, outbase=os.path.join(tmp, "fit"),
              spatial_prior=bool(data["spatial"]))
        cpu = time.process_time() - t0
        maps = {k: nib.load(os.path.join(tmp, f"fit_{k}.nii.gz")).get_fdata() for k in ("D", "f", "Dstar")}
    mask = data["mask"].astype(bool)
    out = {k: np.where(mask, v, np.nan) for k, v in maps.items()}
    np.savez(dst, D=out["D"], f=out["f"], Dstar_p=out["Dstar"] + constants.Db, cpu_s=cpu)


if __name__ == "__main__":
    main(*sys.argv[1:3])
