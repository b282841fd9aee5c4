#!/usr/bin/env python3
"""View IVIM parameter maps and, for any voxel, its measured signal and fitted curve."""
import argparse
import sys

from ivim_common import cli
from ivim_common.errors import InputError, IvimError
from ivim_common.resources import limit_blas_threads

PROG = "ivim_view_fits.py"
EPILOG = r"""
The DWI, b-values, mask and the other maps are found through ivim_fitting.json, the sidecar
that ivim_fitting.py writes beside the maps; -dwi, -b, -ma and -maps override it (-b and -ma
as in ivim_fitting.py). Without a DWI the viewer still shows the maps, the values and the
fitted curve.

Interactive window: the map's axial slices, one at a time (up/down arrow keys or the scroll
wheel change the slice); a left click on a voxel plots its signal against b (linear and log
axes) with the curve of the model at the voxel's parameters, its tissue and perfusion
compartments, and lists the values of every map. The terminal prints the same values.

Voxel indices are 0-based x,y,z, as numpy and nibabel index the image.

examples:
  # open a map and click voxels (needs a display)
  ivim_view_fits.py -i params_map/Fivim_map.nii.gz -param cmap=jet,clim=0\;0.3

  # headless quality control: the figure of one voxel, and every slice of every map
  ivim_view_fits.py -i params_map/Fivim_map.nii.gz --voxel 64,68,2 --save voxel.png \
      --montage maps.png

  # maps with no sidecar, e.g. the original toolbox's results in test_data/: name the data
  ivim_view_fits.py -i results_you_should_get/ivim_maps_rl/Fivim_map.nii.gz \
      -dwi dwi_rl.nii.gz -b bval_rl.txt -ma cord_seg_dilated.nii.gz
"""
NON_INTERACTIVE_BACKENDS = ("agg", "cairo", "pdf", "pgf", "ps", "svg", "template")


def voxel_indices(text):
    """'x,y,z' -> (x, y, z) of non-negative integers."""
    try:
        ijk = tuple(int(v) for v in text.split(","))
    except ValueError:
        ijk = ()
    if len(ijk) != 3 or min(ijk) < 0:
        raise argparse.ArgumentTypeError(f"expected 3 non-negative integers x,y,z, got {text!r}")
    return ijk


def display_param(text):
    """'cmap=jet,clim=0;0.3' (either key optional) -> {'cmap': 'jet', 'clim': (0.0, 0.3)}."""
    import matplotlib

    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key == "cmap" and value in matplotlib.colormaps:
            out["cmap"] = value
        elif key == "clim":
            try:
                lo, hi = (float(v) for v in value.split(";"))
            except ValueError:
                raise argparse.ArgumentTypeError(f"clim must be MIN;MAX, got {value!r}") from None
            out["clim"] = (lo, hi)
        elif key == "cmap":
            raise argparse.ArgumentTypeError(f"unknown matplotlib colour map {value!r}")
        else:
            raise argparse.ArgumentTypeError(
                f"expected cmap=NAME and/or clim=MIN;MAX, got {item!r}")
    return out


def get_parser():
    parser = cli.ArgumentParser(prog=PROG, description=__doc__, epilog=EPILOG)
    parser.add_argument("-i", metavar="MAP", required=True,
                        help="map to show, e.g. params_map/Fivim_map.nii.gz")
    parser.add_argument("-param", metavar="SPEC", type=display_param, default={},
                        help=r"display of the map (and of its --montage row): "
                             r"cmap=NAME,clim=MIN\;MAX (either part optional; default per map, "
                             "e.g. f 0-0.35, D 0-3e-3, D* 0-0.0525 mm^2/s, S0 1st-99th percentile)")
    parser.add_argument("-plotdir", metavar="DIR",
                        help="ignored (kept for the original's command lines): fits are drawn "
                             "from the maps, no per-voxel images are needed")
    data = parser.add_argument_group("data (default: found through ivim_fitting.json)")
    data.add_argument("-dwi", "--dwi", metavar="FILE", help="4-D DWI the maps were fitted to")
    data.add_argument("-b", "--bval", metavar="FILE",
                      help="b-values (s/mm^2), one per volume, text file (FSL .bval works)")
    data.add_argument("-ma", "--mask", metavar="FILE", help="mask of the fitted voxels")
    data.add_argument("-maps", "--maps", metavar="DIR",
                      help="folder of the other maps (default: the map's)")
    headless = parser.add_argument_group("headless use (no display needed)")
    headless.add_argument("--voxel", metavar="X,Y,Z", type=voxel_indices,
                          help="select this voxel (0-based indices) at start")
    headless.add_argument("--save", metavar="FIG.png",
                          help="write the figure of --voxel to FIG.png instead of opening a window")
    headless.add_argument("--montage", metavar="PAGE.png",
                          help="write every slice of every map, with colour bars, to PAGE.png")
    cli.add_force_argument(headless)
    cli.add_common_arguments(parser)
    return parser


def main(argv=None):
    """Run the command line; returns the exit code (0, 1 user error, 2 usage, 130 Ctrl-C)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.save and args.voxel is None:
        parser.error("--save needs --voxel X,Y,Z")
    return cli.run(run, args, PROG)


def run(args):
    """Load the maps and data, write the requested images or open the window."""
    from ivim_common import io, viewer as view

    outputs = [p for p in (args.save, args.montage) if p]
    io.check_outputs(outputs, args.force)
    folder = view.load_fit_folder(args.i, dwi=args.dwi, bvals=args.bval, mask=args.mask,
                                maps_dir=args.maps)
    if args.verbose >= 1:
        for note in folder.notes + ([] if folder.dwi is not None else
                                    ["no DWI: map-only view (give -dwi and -b)"]):
            print(f"{PROG}: note: {note}", file=sys.stderr)
    if args.voxel is not None and any(v >= n for v, n in zip(args.voxel, folder.shape)):
        raise InputError(f"{args.i}: voxel {args.voxel} outside the image of shape {folder.shape}")
    report = print if args.verbose >= 1 else None

    if outputs:
        with io.staged_outputs(outputs, force=args.force) as tmp:
            if args.montage:
                view.montage_figure(folder, **args.param).savefig(tmp[args.montage], dpi=100)
            if args.save:
                viewer = view.FitViewer(folder, report=report, interactive=False, **args.param)
                viewer.select(*args.voxel)
                viewer.fig.savefig(tmp[args.save], dpi=100)
        if report:
            report("wrote " + ", ".join(outputs))
        return

    import matplotlib.pyplot as plt

    if plt.get_backend().lower() in NON_INTERACTIVE_BACKENDS:
        raise IvimError(f"no display for the interactive window (matplotlib backend "
                        f"{plt.get_backend()}): use --voxel X,Y,Z --save FIG.png "
                        "or --montage PAGE.png")
    viewer = view.FitViewer(folder, fig=plt.figure(), report=report, **args.param)
    if args.voxel is not None:
        viewer.select(*args.voxel)
    plt.show()


if __name__ == "__main__":
    limit_blas_threads()  # before numpy loads
    sys.exit(main())
