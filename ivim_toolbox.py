#!/usr/bin/env python3
"""The toolbox's graphical interface: two tabs, "Fit IVIM to NIfTI data" (ivim_fitting.py) and
"Required SNR" (ivim_simu_compute_required_snr.py).

Each tab is a form over its script's options: Run starts that very script in a child process
(its progress bar and Stop, as Ctrl-C: nothing half-written), Copy command gives the line to
run it from a terminal or a batch job, and Load command fills the form from such a line.  The
Fit tab previews the fit of one voxel (click the lowest-b image) with the current settings
before the whole run, and opens ivim_view_fits.py on the result; the Required SNR tab gives the
Cramér-Rao answer in seconds and draws the figures of the result.  Needs a display and tkinter
(Debian/Ubuntu: python3-tk; conda: tk)."""
import argparse
import os
import shlex
import sys

from ivim_common import cli
from ivim_common.resources import limit_blas_threads

PROG = "ivim_toolbox.py"

EXAMPLE = f"""\
example (the Fit tab filled in with the bundled test data):
  {PROG} --fit "-i test_data/dwi_rl.nii.gz -b test_data/bval_rl.txt -ma test_data/cord_seg_dilated.nii.gz -o maps"

Exit codes: 0 window closed, 1 no tkinter or no display, 2 usage."""


def argument_line(text):
    """argparse type: a script's arguments in one string, split as a shell would."""
    try:
        return shlex.split(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"cannot split {text!r} as a shell would: {err}") from None


def get_parser():
    parser = cli.ArgumentParser(prog=PROG, description=__doc__, epilog=EXAMPLE)
    parser.add_argument("--fit", metavar="ARGS", type=argument_line, default=[],
                        help="fill the Fit tab from ivim_fitting.py arguments (one string)")
    parser.add_argument("--snr", metavar="ARGS", type=argument_line, default=[],
                        help="fill the Required SNR tab from ivim_simu_compute_required_snr.py arguments")
    parser.add_argument("--tab", choices=("fit", "snr"), default="fit", help="tab shown first (default: fit)")
    cli.add_common_arguments(parser)
    return parser


def main(argv=None):
    """Open the window; returns the exit code."""
    args = get_parser().parse_args(argv)
    try:
        import tkinter
    except ImportError:
        print(f"{PROG}: error: tkinter is missing: install python3-tk (Debian/Ubuntu) or tk (conda)",
              file=sys.stderr)
        return 1
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        print(f"{PROG}: error: no display ($DISPLAY is not set): run it in a desktop session or with ssh -X",
              file=sys.stderr)
        return 1
    from ivim_common import gui

    try:
        app = gui.ToolboxApp()
    except tkinter.TclError as err:
        print(f"{PROG}: error: cannot open the window: {err}", file=sys.stderr)
        return 1
    for frame, argv in ((app.fit, args.fit), (app.snr, args.snr)):
        if argv:
            frame.set_from_argv(argv)
    app.tabs.select(getattr(app, args.tab))
    app.mainloop()
    return 0


if __name__ == "__main__":
    limit_blas_threads()  # before numpy loads
    sys.exit(main())
