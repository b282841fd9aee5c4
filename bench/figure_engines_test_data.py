#!/usr/bin/env python
"""The test data's maps from two engines side by side: least squares (fast) and Bayesian.

    python bench/figure_engines_test_data.py [--bounds-version 2019] [-o docs/engines_test_data.png]

Fits the 2523 voxels of the bundled test data's mask with both engines (one-step, the chosen
bounds), draws f, D and D* of the slice with the most mask voxels, one row per engine (the
viewer's colour ranges), and prints each map's median and IQR over the mask.
"""
import argparse
import os
import sys

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
MAPS = ("Fivim", "D", "Dstar")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bounds-version", default="2019", choices=("2019", "2020"))
    parser.add_argument("-o", default=os.path.join(REPO, "docs", "engines_test_data.png"))
    args = parser.parse_args(argv)
    inputs = io.load_fit_inputs(os.path.join(DATA, "dwi_rl.nii.gz"), os.path.join(DATA, "bval_rl.txt"),
                                os.path.join(DATA, "cord_seg_dilated.nii.gz"))
    fits = {engine: IvimModel(inputs.bvals, "one-step", args.bounds_version, engine).fit(
        inputs.data, inputs.selected, jobs=2) for engine in ("fast", "bayes")}
    draw_slice_rows(fits, MAPS, inputs.selected, (10, 6.5), f"Test data, slice z = {{z}}, one-step "
                    f"{args.bounds_version} bounds: least squares (top) and Bayesian posterior mean (bottom)", args.o, 90)


def draw_slice_rows(fits, maps, mask, figsize, title, out, dpi):
    """Draw ``maps`` of each fit (a row each, ``{row label: IvimFit}``) on the test data's slice
    with the most mask voxels, in the viewer's colour ranges (an SD map: 0 to half its
    parameter's upper end), with ``title`` (``{z}`` becomes the slice) into ``out``, and print
    each map's median and IQR over the mask."""
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    xs, ys = np.nonzero(mask[:, :, z])
    box = (slice(xs.min() - 3, xs.max() + 4), slice(ys.min() - 3, ys.max() + 4))
    zooms = nib.load(os.path.join(DATA, "dwi_rl.nii.gz")).header.get_zooms()
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(len(fits), len(maps))
    for row, (row_label, fit) in zip(axes, fits.items()):
        for ax, name in zip(row, maps):
            p = PARAMETERS[name.removesuffix("_sd")]
            vmin, vmax = (0.0, 0.5 * p.display[1]) if name.endswith("_sd") else p.display
            image = ax.imshow(np.ma.masked_invalid(fit.maps[name][box + (z,)].T), origin="lower", cmap=p.cmap,
                              vmin=vmin, vmax=vmax, interpolation="nearest", aspect=zooms[1] / zooms[0])
            inside = fit.maps[name][mask]
            label = f"SD of {p.label}" if name.endswith("_sd") else p.label
            ax.set_title(f"{row_label}: {label}, median {np.nanmedian(inside):.3g}", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
            fig.colorbar(image, ax=ax, shrink=0.8, label=p.axis)
            q = np.nanpercentile(inside, [25, 50, 75])
            print(f"{row_label:8s} {name:9s} median {q[1]:.4g} IQR [{q[0]:.4g}, {q[2]:.4g}]")
    fig.suptitle(title.format(z=z), fontsize=11)
    fig.savefig(out, dpi=dpi)
    print(f"wrote {out} ({os.path.getsize(out) // 1024} kB)")


if __name__ == "__main__":
    main()
