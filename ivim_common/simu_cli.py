"""Command-line plumbing of the ivim_simu_*.py scripts: their flags and the run around the work.

Only the standard library is imported at module level, so ``--help`` stays instant; numpy,
the fitters and matplotlib are imported when the work starts.
"""
import argparse
import os
import re
import sys

from . import cli, constants
from .constants import SIMULATION_KINDS
from .errors import InputError
from .progress import Progress

DEFAULT_BVALS = "5,10,15,20,30,50,75,100,125,150,200,250,600,700,800"
DEFAULT_F = "0.01:10:0.30"
DEFAULT_DSTAR = "3.0e-3:10:35e-3"
RANGE_HELP = "start:NUM:stop (NUM values, as numpy.linspace) or a comma list"


def compute_parser(kind, prog, description, example):
    """Parser of a compute script; kind a key of :data:`ivim_common.constants.SIMULATION_KINDS`."""
    parser = cli.ArgumentParser(prog=prog, description=description, epilog=example)
    snr_kind = SIMULATION_KINDS[kind].snr
    noisy = snr_kind is not None
    cli.add_model_arguments(parser, "-model", required=True)
    cli.add_output_argument(parser, "-ofolder", required=True)
    parser.add_argument("-bval", type=cli.bval_list, default=DEFAULT_BVALS,
                        help="comma-separated b-values in s/mm², at least 4 distinct (default: %(default)s)")
    if snr_kind == "fixed":
        parser.add_argument("-snr", type=cli.positive_float, required=True,
                            help=f"SNR = S0/σ of the noise, with S0 = {constants.S0_TRUE:g} the true b = 0 signal")
    if snr_kind == "start":
        parser.add_argument("-snr", type=cli.positive_float, default=constants.DEFAULT_SNR_START,
                            help="SNR where the search starts (default: %(default)g)")
        parser.add_argument("-condition", choices=constants.CONDITIONS, default="FDstar",
                            help="FDstar: error of f·D* <= --max-error; all: the errors of f, D*, D "
                                 "and f·D* all <= --max-error (default: %(default)s)")
        parser.add_argument("--max-error", type=cli.positive_float, default=constants.DEFAULT_MAX_ERROR,
                            help="largest acceptable mean |error| in %% (default: %(default)g)")
        parser.add_argument("--method", choices=constants.REQUIRED_SNR_METHODS, default="montecarlo",
                            help="montecarlo: noisy fits with the toolbox's fitter (default); crlb: from the "
                                 "Cramér-Rao bound of the model in seconds, the asymptotic answer of an "
                                 "unbiased estimator (mean |error| = sqrt(2/π)·SD), optimistic where the "
                                 "fitter's bounds or bias matter")
    parser.add_argument("-F", type=cli.fraction_list, default=DEFAULT_F,
                        help=f"true f values: {RANGE_HELP} (default: %(default)s)")
    parser.add_argument("-Dstar", type=cli.value_list, default=DEFAULT_DSTAR,
                        help=f"true D* values in mm²/s, in --dstar-convention: {RANGE_HELP} (default: %(default)s)")
    parser.add_argument("-D", type=cli.value_list, default=SIMULATION_KINDS[kind].default_D,
                        help=f"true D values in mm²/s: {RANGE_HELP} (default: %(default)s)")
    cli.add_engine_argument(parser)
    if noisy:
        parser.add_argument("--n-draws", type=cli.positive_int, default=constants.DEFAULT_N_DRAWS,
                            help="noise draws per grid cell (default: %(default)s)")
        parser.add_argument("--noise", choices=constants.NOISE_MODELS, default="gaussian",
                            help="gaussian: S + N(0,σ), as the original (default); "
                                 "rician: |S + N(0,σ) + i·N(0,σ)|, magnitude data with its noise floor")
    parser.add_argument("--shard", metavar="K/N", type=cli.shard_spec, default=(1, 1),
                        help="compute only shard K of N of the grid (K = 1..N, N <= grid cells), e.g. for "
                             "a job array; merge the shard files with ivim_simu_plot.py")
    parser.add_argument("--run-id", type=run_id, default=default_run_id(), metavar="ID",
                        help="id of the run, in the file names (sim_results_<date>_run<ID>...): the shards of "
                             "one run share it, and a rerun into the same folder gets another "
                             "(default: $SLURM_ARRAY_JOB_ID, else $SLURM_JOB_ID, else none)")
    cli.add_run_arguments(parser)
    cli.add_common_arguments(parser)
    return parser


def default_run_id():
    """$SLURM_ARRAY_JOB_ID (shared by the tasks of an array), else $SLURM_JOB_ID, else ''."""
    return os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID") or ""


def run_id(text):
    """argparse type: letters, digits and '-' (it goes into file names)."""
    if not re.fullmatch(r"[A-Za-z0-9-]*", text):
        raise argparse.ArgumentTypeError(f"letters, digits and '-' only, got {text!r}")
    return text


def plot_parser(prog, description, example):
    """Parser of ivim_simu_plot.py."""
    parser = cli.ArgumentParser(prog=prog, description=description, epilog=example)
    parser.add_argument("-input", nargs="+", required=True, metavar="NPZ",
                        help="sim_results_*.npz of one run (several: the shard files, merged first)")
    parser.add_argument("-oname", help="base name of the figures, e.g. results/required_snr_plot")
    parser.add_argument("--format", choices=("png", "pdf"), default="png",
                        help="figure format (default: %(default)s)")
    parser.add_argument("--merged", metavar="OUT.npz", help="also write the merged result (and its .json)")
    cli.add_force_argument(parser)
    cli.add_common_arguments(parser)
    return parser


def run_compute(kind, parser, argv=None):
    """Parse argv and run a compute script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parse_compute(parser, argv)
    return cli.run(lambda a: _compute(kind, a, parser.prog, argv), args, parser.prog)


def parse_compute(parser, argv):
    """The arguments of a compute script's ``argv``, every usage check done (through
    ``parser.error``); the GUI checks its fields with it before it runs the script."""
    args = parser.parse_args(argv)
    cli.check_bounds_version(parser, args, "-model")
    args.bounds_version = args.bounds_version or "2020"
    from .engines import options_of

    if getattr(args, "method", "montecarlo") == "crlb" and (args.model not in ("one-step", "two-step")
                                                             or args.dstar_convention != "toolbox"):
        parser.error("--method crlb models one-step and two-step, with -Dstar in the toolbox's convention")
    args.engine_options = options_of(parser, args)
    from .model import check_bvals

    try:
        check_bvals(args.bval, args.model, args.bounds_version, args.b_threshold)
    except ValueError as err:
        parser.error(f"argument -bval: {err}")
    n_cells = len(args.F) * len(args.Dstar) * len(args.D)
    if getattr(args, "snr", 1.0) > constants.SNR_CAP:
        parser.error(f"argument -snr: must be <= {constants.SNR_CAP:g} (the search's cap), got {args.snr:g}")
    if args.dstar_convention == "osipi" and min(args.Dstar) <= max(args.D):
        parser.error("argument -Dstar: with --dstar-convention osipi, every D*p = D + D* must exceed every -D")
    if args.shard[1] > n_cells:
        parser.error(f"argument --shard: {args.shard[1]} shards but the grid has only {n_cells} cells")
    return args


def _compute(kind, args, prog, argv):
    import dataclasses

    import numpy as np

    from . import compiled, design, engines, io, voxelpool
    from . import simulation as simu

    sim = simu.Simulation(bvals=args.bval, F_range=args.F, Dstar_range=args.Dstar, D_range=args.D,
                          approach=args.model, bounds_version=args.bounds_version, engine=args.engine,
                          seed=args.seed, n_draws=getattr(args, "n_draws", 1),
                          noise=getattr(args, "noise", "gaussian"), jobs=args.jobs or voxelpool.default_jobs(),
                          engine_options=args.engine_options, dstar_convention=args.dstar_convention,
                          bval_threshold=args.b_threshold)
    shard = args.shard
    path = simu.result_path(args.ofolder, shard, run_id=args.run_id)
    outputs = [path, simu.sidecar_path(path)]
    io.check_outputs(outputs, args.force)

    compiled.prepare([engines.get(sim.engine)], announce=args.verbose >= 1)    # before the progress starts
    elapsed = simu.timer()
    n_cells = len(simu.shard_cells(sim.n_cells, *shard))
    if args.verbose >= 2:
        print(f"{kind}: {n_cells} grid cells (shard {shard[0]}/{shard[1]}), {sim}", file=sys.stderr)
    snr_kind = SIMULATION_KINDS[kind].snr
    crlb = snr_kind == "start" and args.method == "crlb"
    with voxelpool.WorkerPool(sim.jobs, hint="fewer workers (-j)") as pool, \
            Progress(n_cells, "cell", enabled=args.verbose >= 1, prog=prog) as bar:
        sim = dataclasses.replace(sim, pool=pool)   # one pool for the whole run
        if crlb:
            arrays = design.run_required_snr_crlb(sim, args.condition, args.max_error, shard)
        elif snr_kind == "start":
            arrays = simu.run_required_snr(sim, args.condition, args.max_error, args.snr, shard, bar.update)
        else:
            arrays = simu.run_errors(sim, args.snr if snr_kind == "fixed" else None, shard, bar.update)
    arrays["run_id"] = np.array(args.run_id)
    run_time = elapsed()
    doc = simu.sidecar(arrays, io.provenance(prog, argv), sim, run_time,
                       extra={"search": design.METHOD} if crlb else None)
    with io.staged_outputs(outputs, force=args.force) as tmp:
        io.save_results(*(tmp[p] for p in outputs), arrays, doc)
    if args.verbose >= 1:
        print(f"{path} (+ .json): {n_cells} grid cells in {run_time:.1f} s")
        print(summary(arrays))


def summary(arrays):
    """A few lines per true D: median [min, max] of the mean errors, or of the required SNR."""
    import numpy as np

    lines = []
    for i_d, d in enumerate(arrays["D_range"]):
        if SIMULATION_KINDS[str(arrays["kind"])].snr == "start":
            snr = arrays["min_snr"][..., i_d]
            finite = snr[np.isfinite(snr)]
            text = (f"required SNR median {np.median(finite):.4g} [{finite.min():.4g}, {finite.max():.4g}]"
                    if finite.size else "required SNR: no finite value")
            lines.append(f"  D = {d:.3g} mm²/s: {text}, {snr.size - finite.size} cells not reachable/not computed")
            continue
        parts = []
        for j, name in enumerate(arrays["err_order"]):
            err = arrays["mean_abs_err"][j, ..., i_d]
            err = err[np.isfinite(err)]
            parts.append(f"{name} {np.median(err):.3g} [{err.min():.3g}, {err.max():.3g}]" if err.size
                         else f"{name} -")
        lines.append(f"  D = {d:.3g} mm²/s, mean |error| % median [min, max]: " + "; ".join(parts))
    return "\n".join(lines)


def run_plot(parser, argv=None):
    """Parse argv and run ivim_simu_plot.py; returns the exit code."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    if not args.oname and not args.merged:
        parser.error("give -oname (figures) and/or --merged (merged result)")
    return cli.run(lambda a: _plot(a, parser.prog, argv), args, parser.prog)


def _plot(args, prog, argv):
    from . import io, plotting
    from . import simulation as simu

    for path in args.input:
        if not os.path.isfile(path):
            raise InputError(f"-input: {path} does not exist or is not a file")
    results = [io.load_results(path) for path in args.input]
    merged = simu.merge_results(results, args.input)
    if args.merged and not args.merged.endswith(".npz"):
        raise InputError(f"--merged: the file name must end with .npz (got {args.merged})")
    merged_paths = [args.merged, simu.sidecar_path(args.merged)] if args.merged else []
    figures = plotting.simulation_figures(merged, args.oname, args.format) if args.oname else {}
    outputs = [*merged_paths, *figures]
    io.check_outputs(outputs, args.force)
    with io.staged_outputs(outputs, force=args.force) as tmp:
        if args.merged:
            doc = simu.sidecar(merged, io.provenance(prog, argv),
                               extra={"merged_from": [io.input_record(p) for p in args.input]})
            io.save_results(*(tmp[p] for p in merged_paths), merged, doc)
        for path, draw in figures.items():
            draw().savefig(tmp[path], dpi=120)
    if args.verbose >= 1:
        print(f"{str(merged['kind'])} from {len(args.input)} file(s):")
        print(summary(merged))
        print("wrote " + ", ".join(outputs))
