#!/usr/bin/env python
"""The test data's maps with the spatial prior beside the voxel-wise posterior.

    python bench/figure_spatial_test_data.py [--bounds-version 2020] [-o docs/img/spatial_prior_test_data.png]

Fits the 2523 voxels of the bundled test data's mask with --engine bayes, --prior auto (voxel-wise)
and --prior spatial (one-step, the chosen bounds), draws f, D, D* and f's posterior SD of the slice
with the most mask voxels, one row per prior (the viewer's colour ranges), and prints each map's
median and IQR over the mask and the CPU time of each fit.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ivim_common.resources  # noqa: E402

ivim_common.resources.limit_blas_threads()
from figure_engines_test_data import DATA, REPO, draw_slice_rows  # noqa: E402
from ivim_common import IvimModel, io  # noqa: E402

MAPS = ("Fivim", "D", "Dstar", "Fivim_sd")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bounds-version", default="2020", choices=("2019", "2020", "osipi"))
    parser.add_argument("-o", default=os.path.join(REPO, "docs", "img", "spatial_prior_test_data.png"))
    args = parser.parse_args(argv)
    inputs = io.load_fit_inputs(os.path.join(DATA, "dwi_rl.nii.gz"), os.path.join(DATA, "bval_rl.txt"),
                                os.path.join(DATA, "cord_seg_dilated.nii.gz"))
    fits = {}
    for prior in ("auto", "spatial"):
        mdl = IvimModel(inputs.bvals, "one-step", args.bounds_version, "bayes", prior=prior)
        mdl.fit(inputs.data[:2, :2, :1], None)          # compiled or loaded, not timed
        t0 = time.process_time()
        fits[prior] = mdl.fit(inputs.data, inputs.selected)
        print(f"--prior {prior}: {time.process_time() - t0:.2f} s of CPU")
    draw_slice_rows(fits, MAPS, inputs.selected, (12, 5.6), f"Test data, slice z = {{z}}, one-step "
                    f"{args.bounds_version}, --engine bayes: voxel-wise (--prior auto, top) and --prior spatial "
                    "(bottom)", args.o, 80)


if __name__ == "__main__":
    main()
