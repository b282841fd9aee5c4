#!/usr/bin/env python3
"""IVIM maps of a BIDS dataset (a BIDS App): fit every DWI of each participant, write one QC report
per participant, then a group table."""
import os
import sys

from ivim_common import cli
from ivim_common.resources import limit_blas_threads
from ivim_common.errors import InputError

PROG = "ivim_bids.py"

EXAMPLE = f"""\
example (one participant per SLURM array task, then the group level; see docs/bids.md):
  {PROG} /data/study /data/study/derivatives/ivim participant --participant-label 01 -j 4
  {PROG} /data/study /data/study/derivatives/ivim group

writes, under OUTPUT_DIR:
  dataset_description.json, .bidsignore
  sub-<label>/[ses-<label>/]dwi/<source entities>_model-ivim_param-<name>_dwimap.nii.gz (+ .json):
      every map of ivim_fitting.py in BEP016 names (S0, D, f, Dstar, fDstar, ..., fSd, modelChoice,
      RMSE, boundsHit), the fit's sidecar <source entities>_model-ivim_dwimap.json and, with
      --mask auto, the mask <source entities>_desc-brain_mask.nii.gz
  sub-<label>.html        the participant's QC report (one self-contained file)
  group_ivim.tsv, group_ivim.html   (group level)
b-values and b-vectors follow BIDS inheritance (e.g. a dataset-level acq-ivim_dwi.bval).  A DWI
whose outputs are complete is skipped (a rerun resumes; --force redoes it).  A participant that
fails is reported in one line and the others go on.  Exit codes: 0 done, 1 a participant failed
or an input/output error, 2 usage, 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP."""


def get_parser():
    """The command-line parser (argparse): the BIDS App's arguments and ivim_fitting.py's fitting flags."""
    parser = cli.ArgumentParser(prog=PROG, description=__doc__, epilog=EXAMPLE)
    parser.add_argument("bids_dir", metavar="BIDS_DIR", help="the BIDS dataset (holds dataset_description.json)")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR",
                        help="the derivatives folder (outside BIDS_DIR, or under BIDS_DIR/derivatives/)")
    parser.add_argument("analysis_level", choices=("participant", "group"),
                        help="participant: fit and report each participant; group: the table of every fit")
    parser.add_argument("--participant-label", nargs="+", metavar="LABEL",
                        help="participants to process, with or without 'sub-' (default: all)")
    parser.add_argument("--session-label", nargs="+", metavar="LABEL",
                        help="sessions to process, with or without 'ses-' (default: all)")
    parser.add_argument("--mask", choices=("auto", "none"),
                        help="auto (default): a brain/body mask from the mean lowest-b image (Otsu threshold, "
                             "largest connected component, holes filled), written beside the maps; none: every "
                             "voxel with a finite, positive signal at the lowest b")
    parser.add_argument("--mask-dir", metavar="DERIV_DIR",
                        help="take each DWI's mask from this derivatives dataset: sub-<label>/[ses-<label>/]dwi/"
                             "<the DWI's entities>*_mask.nii.gz (desc-brain preferred)")
    parser.add_argument("--dseg-dir", metavar="DERIV_DIR",
                        help="group level: one row per label of each DWI's <entities>*_dseg.nii.gz in this "
                             "derivatives dataset, named by its _dseg.tsv (columns index, name)")
    parser.add_argument("--force", action="store_true",
                        help="redo DWIs whose outputs are complete (replacing only the toolbox's files), "
                             "replace the group table")
    cli.add_fitting_arguments(parser, "-mo", "--model")
    cli.add_common_arguments(parser)
    return parser


def main(argv=None):
    """Run the command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_parser()
    args = parser.parse_args(argv)
    cli.check_fitting_arguments(parser, args, "-mo")
    if args.mask and args.mask_dir:
        parser.error("--mask and --mask-dir: give one (--mask-dir takes the masks from a derivatives dataset)")
    args.mask = args.mask or "auto"
    for flag, folder in (("--mask-dir", args.mask_dir), ("--dseg-dir", args.dseg_dir)):
        if folder and not os.path.isdir(folder):
            parser.error(f"{flag} {folder}: no such folder")
    from ivim_common import bids_app
    from ivim_common.io import bids_dataset

    try:
        dataset = bids_dataset.BidsDataset(args.bids_dir)
        bids_dataset.check_output_dir(args.bids_dir, args.output_dir)
        labels = dataset.select(args.participant_label)
    except InputError as err:
        parser.error(str(err))
    if args.analysis_level == "participant":
        return cli.run(lambda a: bids_app.participant_level(a, argv, dataset, labels), args, PROG)
    return cli.run(lambda a: bids_app.group_level(a, labels), args, PROG)


if __name__ == "__main__":
    limit_blas_threads()  # before numpy loads
    sys.exit(main())
