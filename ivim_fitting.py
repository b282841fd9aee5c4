#!/usr/bin/env python3
"""Voxel-wise IVIM fitting of a 4-D diffusion-weighted NIfTI image (successor of Lévy et al., MRM 2020)."""
import os
import sys
import textwrap
import time

from ivim_common import cli, constants, engines, limit_blas_threads
from ivim_common.constants import FIT_SIDECAR, MAP_FILES

PROG = "ivim_fitting.py"

EXAMPLE = f"""\
example (the bundled test data, the published maps' bounds):
  {PROG} -i test_data/dwi_rl.nii.gz -b test_data/bval_rl.txt \\
      -ma test_data/cord_seg_dilated.nii.gz -mo one-step --bounds-version 2019 -o ivim_maps_rl_2019

writes ivim_maps_rl_2019/{{S0,D,Dstar,Fivim,FivimXDstar,AIC,R2,exception}}_map.nii.gz (float32, the
DWI's affine; 0 outside the mask; NaN where a fit failed, with exception_map = 1), how far to trust
each voxel: {{S0,D,Fivim,Dstar}}_sd_map.nii.gz (their SD), ADC, AICc, AICc_mono, model_choice
(1 = IVIM, 0 = mono-exponential), RMSE and bounds_hit (bit flags: 1/2 S0 at its lower/upper
bound, 4/8 D, 16/32 f, 64/128 D*) maps, and the
sidecar ivim_maps_rl_2019/{FIT_SIDECAR} (inputs with sha256, command, equation, bounds, seed, counts,
median and IQR of each map).  Exit codes: 0 done, 1 input/output error, 2 usage, 130 Ctrl-C."""


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
    parser.add_argument("-b", "--bval", required=True, metavar="BVAL",
                        help="b-values (s/mm^2), one per volume, as one row or one column, separated by "
                             "spaces, commas or tabs (FSL .bval works)")
    parser.add_argument("-ma", "--mask", metavar="MASK",
                        help="3-D NIfTI mask on the DWI's grid; voxels > 0 are fitted (default: see above)")
    parser.add_argument("-mo", "--model", default="one-step", choices=constants.APPROACHES,
                        help="one-step: S0, D, f, D* free (default); two-step: D fixed at Dinit")
    parser.add_argument("-o", "--ofolder", default="params_map", metavar="FOLDER",
                        help="output folder (default: %(default)s)")
    parser.add_argument("--bounds-version", choices=constants.BOUNDS_VERSIONS,
                        help="one-step bounds: 2020 (default; b >= 400 for Dinit, f in [0, 0.20], "
                             "D* in [2*Dinit, 50e-3]) or 2019 (the published maps; b >= 500, f in [0, 0.35], "
                             "D* in [0.8*Dinit, 35.5e-3])")
    cli.add_engine_argument(parser)
    parser.add_argument("--seed", type=cli.non_negative_int, default=0,
                        help="seed of the lmfit engine; each voxel's seed derives from it and the voxel's "
                             "index (default: %(default)s)")
    parser.add_argument("-j", "--jobs", type=cli.positive_int, metavar="N",
                        help=f"worker processes (default: all cores, here {os.cpu_count()})")
    parser.add_argument("-mt", type=int, choices=(0, 1), default=1,
                        help="original flag: 0 = a single process (as -j 1), 1 = use --jobs (default)")
    parser.add_argument("--chunk-size", type=cli.positive_int, metavar="N",
                        help="voxels per chunk of work (default: 5000 fast, 20 lmfit); results do not "
                             "depend on it")
    parser.add_argument("--model-choice", choices=constants.MODEL_CHOICE_CRITERIA, default="aicc",
                        help="criterion of model_choice_map, IVIM against the mono-exponential fit: aicc "
                             "(default) or bic; recorded in the sidecar")
    parser.add_argument("--bootstrap", type=cli.non_negative_int, default=0, metavar="N",
                        help="residual bootstrap with N refits per voxel (0: off, the default): the *_sd maps "
                             "then come from it, with *_ci_low/*_ci_high maps (2.5/97.5 %%); seeded per voxel "
                             "from --seed; with the fast engine about 2-3 ms of CPU per voxel for N = 200")
    parser.add_argument("--force", action="store_true",
                        help="write into an existing output folder, replacing only the toolbox's maps and the "
                             "sidecar (nothing else in it is touched)")
    cli.add_common_arguments(parser)
    return parser


def fit_to_folder(args, argv):
    """Load and check the inputs, fit every selected voxel, write the maps and the sidecar."""
    from ivim_common import IvimModel, io

    start = time.perf_counter()
    io.check_output_folder(args.ofolder, args.force, [*MAP_FILES.values(), FIT_SIDECAR])
    inputs = io.load_fit_inputs(args.input, args.bval, args.mask, args.model)
    jobs = 1 if args.mt == 0 else (args.jobs or os.cpu_count())
    model = IvimModel(inputs.bvals, args.model, args.bounds_version or "2020", args.engine, **args.engine_options)
    if args.verbose >= 2:
        print(f"{PROG}: {int(inputs.selected.sum())} voxels x {inputs.bvals.size} b-values, "
              f"{inputs.selection}; engine {args.engine}, {jobs} job(s)", file=sys.stderr)
    fit = model.fit(inputs.data, inputs.selected, jobs=jobs, seed=args.seed, chunk_size=args.chunk_size,
                    progress=args.verbose >= 1, model_choice=args.model_choice, bootstrap=args.bootstrap)
    sidecar = fit.to_folder(args.ofolder, affine=inputs.image, force=args.force, sidecar={
        **io.provenance(PROG, argv), "inputs": inputs.records, "voxel_selection": inputs.selection,
        "run_time_s": round(time.perf_counter() - start, 3)})
    if args.verbose >= 1:
        counts = sidecar["counts"]
        print(f"{PROG}: fitted {counts['fitted']} voxels, {counts['failed']} failed, "
              f"in {sidecar['run_time_s']:.1f} s ({args.model}, engine {args.engine}, {jobs} job(s)); "
              f"maps in {args.ofolder}{os.sep}")


def main(argv=None):
    """Run the command line; returns the exit code (0, 1, 2 or 130)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.model == "two-step" and args.bounds_version is not None:
        parser.error("--bounds-version applies to -mo one-step only (two-step has one set of bounds)")
    args.engine_options = engines.options_of(parser, args)
    return cli.run(lambda a: fit_to_folder(a, argv), args, PROG)


if __name__ == "__main__":
    limit_blas_threads()  # before numpy loads
    sys.exit(main())
