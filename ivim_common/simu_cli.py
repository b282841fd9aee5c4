"""Command-line plumbing of the ivim_simu_*.py scripts: their flags and the run around the work.

Only the standard library is imported at module level, so ``--help`` stays instant; numpy,
the fitters and matplotlib are imported when the work starts.
"""
import os
import sys

from . import cli, constants
from .errors import InputError

DEFAULT_BVALS = "5,10,15,20,30,50,75,100,125,150,200,250,600,700,800"
DEFAULT_F = "0.01:10:0.30"
DEFAULT_DSTAR = "3.0e-3:10:35e-3"
DEFAULT_D = {"error_nonoise": "0.2e-3,0.3e-3,0.7e-3,1.0e-3,1.2e-3,1.5e-3,1.8e-3,2.0e-3,2.5e-3,2.9e-3",
             "error_noise": "0.3e-3,1.5e-3", "required_snr": "0.3e-3,1.5e-3"}
RANGE_HELP = "start:NUM:stop (NUM values, as numpy.linspace) or a comma list"


def _common_arguments(parser):
    parser.add_argument("--force", action="store_true",
                        help="replace outputs that already exist (only the files this run writes)")
    cli.add_common_arguments(parser)


def compute_parser(kind, prog, description, example):
    """Parser of a compute script; kind in 'error_nonoise', 'error_noise', 'required_snr'."""
    parser = cli.ArgumentParser(prog=prog, description=description, epilog=example)
    noisy = kind != "error_nonoise"
    parser.add_argument("-model", required=True, choices=constants.APPROACHES,
                        help="fitting approach (as ivim_fitting.py)")
    parser.add_argument("-ofolder", required=True,
                        help="output folder (created if needed) for sim_results_<yymmddHHMMSS>.npz and .json")
    parser.add_argument("-bval", default=DEFAULT_BVALS,
                        help="comma-separated b-values in s/mm² (default: %(default)s)")
    if kind == "error_noise":
        parser.add_argument("-snr", type=cli.positive_float, required=True,
                            help=f"SNR = S0/σ of the noise, with S0 = {constants.S0_TRUE:g} the true b = 0 signal")
    if kind == "required_snr":
        parser.add_argument("-snr", type=cli.positive_float, default=constants.DEFAULT_SNR_START,
                            help="SNR where the search starts (default: %(default)g)")
        parser.add_argument("-condition", choices=constants.CONDITIONS, default="FDstar",
                            help="FDstar: error of f·D* <= --max-error; all: the errors of f, D*, D "
                                 "and f·D* all <= --max-error (default: %(default)s)")
        parser.add_argument("--max-error", type=cli.positive_float, default=constants.DEFAULT_MAX_ERROR,
                            help="largest acceptable mean |error| in %% (default: %(default)g)")
        parser.add_argument("--method", choices=("montecarlo", "crlb"), default="montecarlo",
                            help="montecarlo: noisy fits with the toolbox's fitter (default); crlb: from the "
                                 "Cramér-Rao bound of the model in seconds, the asymptotic answer of an "
                                 "unbiased estimator (mean |error| = sqrt(2/π)·SD), optimistic where the "
                                 "fitter's bounds or bias matter")
    parser.add_argument("-F", default=DEFAULT_F, help=f"true f values: {RANGE_HELP} (default: %(default)s)")
    parser.add_argument("-Dstar", default=DEFAULT_DSTAR,
                        help=f"true D* values in mm²/s: {RANGE_HELP} (default: %(default)s)")
    parser.add_argument("-D", default=DEFAULT_D[kind],
                        help=f"true D values in mm²/s: {RANGE_HELP} (default: %(default)s)")
    parser.add_argument("--engine", choices=constants.ENGINES, default="fast",
                        help="fitting engine: fast (compiled, default) or lmfit (the original's "
                             "differential evolution, ~2 s per fit: tiny grids only)")
    parser.add_argument("--bounds-version", choices=constants.BOUNDS_VERSIONS,
                        help="one-step bounds: 2020 (the original's code since Dec 2020, default) or "
                             "2019 (the code behind the published results); not for two-step")
    parser.add_argument("--seed", type=cli.non_negative_int, default=0,
                        help=("seed of the noise draws and of the lmfit engine" if noisy else
                              "seed of the lmfit engine (the fast engine draws nothing)")
                        + " (default: %(default)s)")
    if noisy:
        parser.add_argument("--n-draws", type=cli.positive_int, default=constants.DEFAULT_N_DRAWS,
                            help="noise draws per grid cell (default: %(default)s)")
        parser.add_argument("--noise", choices=constants.NOISE_MODELS, default="gaussian",
                            help="gaussian: S + N(0,σ), as the original (default); "
                                 "rician: |S + N(0,σ) + i·N(0,σ)|, magnitude data with its noise floor")
    parser.add_argument("-j", "--jobs", type=cli.positive_int, metavar="N",
                        help="worker processes for the fits (default: all cores)")
    parser.add_argument("--shard", metavar="K/N",
                        help="compute only shard K of N of the grid (K = 1..N, N <= grid cells), e.g. for "
                             "a job array; merge the shard files with ivim_simu_plot.py")
    _common_arguments(parser)
    return parser


def plot_parser(prog, description, example):
    """Parser of ivim_simu_plot.py."""
    parser = cli.ArgumentParser(prog=prog, description=description, epilog=example)
    parser.add_argument("-input", nargs="+", required=True, metavar="NPZ",
                        help="sim_results_*.npz of one run (several: the shard files, merged first)")
    parser.add_argument("-oname", help="base name of the figures, e.g. results/required_snr_plot")
    parser.add_argument("--format", choices=("png", "pdf"), default="png",
                        help="figure format (default: %(default)s)")
    parser.add_argument("--merged", metavar="OUT.npz", help="also write the merged result (and its .json)")
    _common_arguments(parser)
    return parser


def _progress(total, verbose):
    from tqdm import tqdm

    return tqdm(total=total, unit="cell", file=sys.stderr, disable=verbose == 0 or not sys.stderr.isatty())


def run_compute(kind, parser, argv=None):
    """Parse argv and run a compute script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    if args.model == "two-step" and args.bounds_version is not None:
        parser.error("--bounds-version applies to -model one-step only (two-step has one set of bounds)")
    args.bounds_version = args.bounds_version or "2020"
    return cli.run(lambda a: _compute(kind, a, parser.prog, argv), args, parser.prog)


def _compute(kind, args, prog, argv):
    from . import io
    from . import simulation as simu

    values = dict(bvals=simu.parse_bvals(args.bval), F_range=simu.parse_values(args.F, "-F"),
                  Dstar_range=simu.parse_values(args.Dstar, "-Dstar"), D_range=simu.parse_values(args.D, "-D"))
    if values["F_range"].max() > 1:
        raise InputError(f"-F: f is a fraction, every value must be <= 1 (got {args.F!r})")
    sim = simu.Simulation(approach=args.model, bounds_version=args.bounds_version, engine=args.engine,
                          seed=args.seed, n_draws=getattr(args, "n_draws", 1),
                          noise=getattr(args, "noise", "gaussian"), jobs=args.jobs or os.cpu_count() or 1,
                          **values)
    shard = simu.parse_shard(args.shard, sim.n_cells) if args.shard else (1, 1)
    path = simu.result_path(args.ofolder, shard)
    outputs = [path, simu.sidecar_path(path)]
    io.check_outputs(outputs, args.force)

    from .voxelpool import prepare_engine
    prepare_engine(sim.engine, announce=args.verbose >= 1)    # before the progress bar starts
    elapsed = simu.timer()
    n_cells = len(simu.shard_cells(sim.n_cells, *shard))
    if args.verbose >= 2:
        print(f"{kind}: {n_cells} grid cells (shard {shard[0]}/{shard[1]}), {sim}", file=sys.stderr)
    crlb = kind == "required_snr" and args.method == "crlb"
    with _progress(n_cells, args.verbose) as bar:
        if crlb:
            from . import design
            arrays = design.run_required_snr_crlb(sim, args.condition, args.max_error, shard)
        elif kind == "required_snr":
            arrays = simu.run_required_snr(sim, args.condition, args.max_error, args.snr, shard, bar.update)
        else:
            arrays = simu.run_errors(sim, args.snr if kind == "error_noise" else None, shard, bar.update)
    run_time = elapsed()
    doc = simu.sidecar(arrays, io.provenance(prog, argv), sim, run_time,
                       extra={"search": design.METHOD} if crlb else None)
    with io.staged_outputs(outputs) as tmp:
        simu.save_results(*(tmp[p] for p in outputs), arrays, doc)
    if args.verbose >= 1:
        print(f"{path} (+ .json): {n_cells} grid cells in {run_time:.1f} s")
        print(summary(arrays))


def summary(arrays):
    """A few lines per true D: median [min, max] of the mean errors, or of the required SNR."""
    import numpy as np

    lines = []
    for i_d, d in enumerate(arrays["D_range"]):
        if str(arrays["kind"]) == "required_snr":
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
    results = [simu.load_results(path) for path in args.input]
    merged = simu.merge_results(results, args.input)
    if args.merged and not args.merged.endswith(".npz"):
        raise InputError(f"--merged: the file name must end with .npz (got {args.merged})")
    merged_paths = [args.merged, simu.sidecar_path(args.merged)] if args.merged else []
    figures = plotting.simulation_figures(merged, args.oname, args.format) if args.oname else {}
    outputs = [*merged_paths, *figures]
    io.check_outputs(outputs, args.force)
    with io.staged_outputs(outputs) as tmp:
        if args.merged:
            doc = simu.sidecar(merged, io.provenance(prog, argv),
                               extra={"merged_from": [io.input_record(p) for p in args.input]})
            simu.save_results(*(tmp[p] for p in merged_paths), merged, doc)
        for path, draw in figures.items():
            draw().savefig(tmp[path], dpi=120)
    if args.verbose >= 1:
        print(f"{str(merged['kind'])} from {len(args.input)} file(s):")
        print(summary(merged))
        print("wrote " + ", ".join(outputs))
