#!/usr/bin/env python3
"""Voxel-wise IVIM fitting of a 4-D diffusion-weighted NIfTI image (successor of Lévy et al., MRM 2020)."""
import os
import sys
import textwrap
import time

from ivim_common import cli, constants
from ivim_common.constants import FIT_SIDECAR, MAP_FILES
from ivim_common.errors import UsageError
from ivim_common.resources import limit_blas_threads

PROG = "ivim_fitting.py"

EXAMPLE = f"""\
example (the bundled test data, the published maps' bounds):
  {PROG} -i test_data/dwi_rl.nii.gz -b test_data/bval_rl.txt \\
      -ma test_data/cord_seg_dilated.nii.gz -mo one-step --bounds-version 2019 -o ivim_maps_rl_2019
(the same with --engine bayes --prior spatial: posterior maps that share information between
neighbouring voxels of a tissue; docs/accuracy_priors.md)

writes ivim_maps_rl_2019/{{S0,D,Dstar,Fivim,FivimXDstar,AIC,R2,exception}}_map.nii.gz (float32, the
DWI's affine; 0 outside the mask; NaN where a fit failed, with exception_map = 1), how far to trust
each voxel: {{S0,D,Fivim,Dstar}}_sd_map.nii.gz (their SD), ADC, AICc, AICc_mono, model_choice
(1 = IVIM, 0 = mono-exponential), RMSE and bounds_hit (bit flags: 1/2 S0 at its lower/upper
bound, 4/8 D, 16/32 f, 64/128 D*) maps, and the
sidecar ivim_maps_rl_2019/{FIT_SIDECAR} (inputs with sha256, command, equation, bounds, seed, counts,
median and IQR of each map).  Exit codes: 0 done, 1 input/output error or a worker died, 2 usage, 130 Ctrl-C,
143 SIGTERM (a batch time limit), 129 SIGHUP."""


def get_parser():
    """The command-line parser (argparse), with the model equation and a worked example."""
    parser = cli.ArgumentParser(
        prog=PROG,
        description=f"""\
Fit the IVIM bi-exponential model voxel by voxel to a 4-D diffusion-weighted image:

  {constants.EQUATION}

{textwrap.fill("b in s/mm^2, D and Dstar in mm^2/s. " + constants.CONVERSION, 96)}

Each voxel: a log-linear fit on the high b-values gives Dinit and S0(1-f), then a bounded fit
of all b-values (as the original toolbox), then a refit within +/-5% of that result.
Without a mask (-ma), every voxel whose signal is finite and positive at the lowest b-value is
fitted.  A voxel with a NaN, Inf or non-positive sample is marked failed and the run goes on.""",
        epilog=EXAMPLE)
    parser.add_argument("-i", "--input", required=True, metavar="DWI",
                        help="4-D diffusion-weighted NIfTI image (x, y, z, volume)")
    parser.add_argument("-b", "--bval", metavar="BVAL",
                        help="b-values (s/mm^2), one per volume, as one row or one column, separated by "
                             "spaces, commas or tabs (FSL .bval works); default: the .bval beside the input "
                             "(BIDS/FSL naming, e.g. sub-01_dwi.bval), or 'bvals' in its folder")
    parser.add_argument("--bvec", metavar="BVEC",
                        help="gradient directions (FSL: 3 rows, one column per volume), for --directions "
                             "trace/each; default: the .bvec beside the input, if there is one")
    parser.add_argument("-ma", "--mask", metavar="MASK",
                        help="3-D NIfTI mask on the DWI's grid; voxels > 0 are fitted (default: see above)")
    cli.add_output_argument(parser, "-o", default="params_map")
    parser.add_argument("--bids", action="store_true",
                        help="write BIDS derivatives (BEP016 draft) under FOLDER: sub-<label>/[ses-<label>/]dwi/"
                             "<source entities>_model-ivim_param-<name>_dwimap.nii.gz with JSON sidecars, and "
                             "FOLDER/dataset_description.json; the input's name must be BIDS (sub-...)")
    cli.add_fitting_arguments(parser, "-mo", "--model")
    cli.add_force_argument(parser)
    cli.add_common_arguments(parser)
    return parser


def fit_to_folder(args, argv):
    """Load and check the inputs, fit every selected voxel (per set of directions), write the
    maps and their sidecars (the toolbox's folder, or BIDS derivatives), holding the output
    folder's lock: a second run into the same folder at the same time is refused, so a folder
    never mixes the files of two runs."""
    from ivim_common import io

    with io.output_folder_lock(args.ofolder):
        _fit_to_folder(args, argv)


def _fit_to_folder(args, argv):
    from ivim_common import io, model as ivim_model

    start = time.perf_counter()
    sets_out = output_sets(args)               # 'each': known once the b-vectors are read
    check_outputs(args, sets_out)
    inputs = io.load_fit_inputs(args.input, args.bval, args.mask, args.model)
    if args.engine_options.get("prior") == "spatial":
        from ivim_common import spatial

        try:
            spatial.check_volume(inputs.selected.shape, int(inputs.selected.sum()))
        except ValueError as err:
            raise UsageError(str(err)) from None
    sets, bvec_record = io.volume_sets(inputs, args.bvec, args.directions, args.b_tolerance,
                                       ivim_model.n_free(args.model))
    if args.directions == "each":
        sets_out = output_sets(args, [label for label, *_ in sets])
        check_outputs(args, sets_out)
    jobs = cli.fitting_jobs(args)
    records = {**inputs.records, "bvec": bvec_record, "bval_source": args.bval_source}
    for label, bvals, data, directions in sets:
        model = cli.fitting_model(args, bvals, args.bval)
        if args.verbose >= 2:
            print(f"{PROG}: {int(inputs.selected.sum())} voxels x {bvals.size} b-values ({label or 'all volumes'}), "
                  f"{inputs.selection}; engine {args.engine}, {jobs} job(s)", file=sys.stderr)
        fit = model.fit(data, inputs.selected, jobs=jobs, progress=args.verbose >= 1, **args.fit_options)
        folder, paths = sets_out[label]
        extra = {**io.provenance(PROG, argv), "inputs": records, "voxel_selection": inputs.selection,
                 "directions": directions, "run_time_s": round(time.perf_counter() - start, 3)}
        if args.bids:
            doc = fit.to_bids(args.ofolder, paths, affine=inputs.image, sidecar=extra)
        else:
            doc = fit.to_folder(folder, affine=inputs.image, force=args.force, sidecar=extra)
        if args.verbose >= 1:
            counts = doc["counts"]
            print(f"{PROG}: fitted {counts['fitted']} voxels{'' if label is None else f' ({label})'}, "
                  f"{counts['failed']} failed, in {doc['run_time_s']:.1f} s ({args.model}, engine "
                  f"{args.engine}, {jobs} job(s)); maps in {folder}{os.sep}")


def check_outputs(args, sets_out):
    """Refuse, before any work, outputs that exist (without --force) or cannot be written."""
    from ivim_common import io

    for folder, paths in sets_out.values():
        if args.bids:
            io.check_bids_outputs(args.ofolder, paths.values(), args.force)
        else:
            io.check_output_folder(folder, args.force, [*MAP_FILES.values(), FIT_SIDECAR])


def output_sets(args, labels=None):
    """``{set label: (folder, {map: path} for --bids)}`` of the outputs: one set (label None, or
    'trace'), or one per direction ('dir1', ...; before the b-vectors are read, none)."""
    from ivim_common import io

    labels = labels or ([None] if args.directions == "all" else ["trace"] if args.directions == "trace" else [])
    out = {}
    for label in labels:
        desc = label if args.directions == "each" else None
        if args.bids:
            paths = io.bids_paths(args.ofolder, args.input, desc)
            out[label] = (os.path.dirname(paths["S0"]), paths)
        else:
            out[label] = (os.path.join(args.ofolder, label) if desc else args.ofolder, {})
    return out


def main(argv=None):
    """Run the command line; returns the exit code (0, 1, 2, or 128 + signal: 130, 143, 129)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(get_parser(), argv)
    return cli.run(lambda a: fit_to_folder(a, argv), args, PROG)


def parse_args(parser, argv):
    """The arguments of ``argv``, every usage check done (through ``parser.error``); the GUI
    checks its fields with it before it runs the script."""
    args = parser.parse_args(argv)
    cli.check_fitting_arguments(parser, args, "-mo")
    check_inputs(parser, args)
    return args


def check_inputs(parser, args):
    """Usage errors of the inputs that need more than argparse: --bids with a non-BIDS name,
    b-values and b-vectors found beside the input."""
    from ivim_common import io

    if args.bids and io.bids_source(args.input) is None:
        parser.error(f"--bids: the input's name {os.path.basename(args.input)!r} is not BIDS "
                     "(sub-<label>_..._dwi.nii.gz)")
    args.bval_source = "-b" if args.bval else None
    if args.bval is None:
        args.bval = io.find_beside(args.input, "bval")
        if args.bval is None:
            parser.error(f"argument -b/--bval: not given, and no .bval beside {args.input}")
        args.bval_source = f"found beside the input: {args.bval}"
    if args.directions != "all" and args.bvec is None:
        args.bvec = io.find_beside(args.input, "bvec")
        if args.bvec is None:
            parser.error(f"--directions {args.directions} needs --bvec (no .bvec beside {args.input})")


if __name__ == "__main__":
    limit_blas_threads()  # before numpy loads
    sys.exit(main())
