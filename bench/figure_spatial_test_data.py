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
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ivim_common import IvimModel, io  # noqa: E402
from ivim_common.constants import PARAMETERS  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "test_data")
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
    mask = inputs.selected
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    xs, ys = np.nonzero(mask[:, :, z])
    box = (slice(xs.min() - 3, xs.max() + 4), slice(ys.min() - 3, ys.max() + 4))
    zooms = nib.load(os.path.join(DATA, "dwi_rl.nii.gz")).header.get_zooms()
    fig = Figure(figsize=(12, 5.6), layout="constrained")
    axes = fig.subplots(2, len(MAPS))
    for row, (prior, fit) in zip(axes, fits.items()):
        for ax, name in zip(row, MAPS):
            p = PARAMETERS[name.removesuffix("_sd")]
            vmin, vmax = (0.0, 0.5 * p.display[1]) if name.endswith("_sd") else p.display
            values = fit.maps[name][box + (z,)].T
            image = ax.imshow(np.ma.masked_invalid(values), origin="lower", cmap=p.cmap, vmin=vmin, vmax=vmax,
                              interpolation="nearest", aspect=zooms[1] / zooms[0])
            inside = fit.maps[name][mask]
            label = f"SD of {p.label}" if name.endswith("_sd") else p.label
            ax.set_title(f"{prior}: {label}, median {np.nanmedian(inside):.3g}", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
            fig.colorbar(image, ax=ax, shrink=0.8, label=p.axis)
            q = np.nanpercentile(inside, [25, 50, 75])
            print(f"{prior:8s} {name:9s} median {q[1]:.4g} IQR [{q[0]:.4g}, {q[2]:.4g}]")
    fig.suptitle(f"Test data, slice z = {z}, one-step {args.bounds_version}, --engine bayes: voxel-wise (--prior auto, "
                 "top) and --prior spatial (bottom)", fontsize=11)
    fig.savefig(args.o, dpi=80)
    print(f"wrote {args.o} ({os.path.getsize(args.o) // 1024} kB)")


if __name__ == "__main__":
    main()
