"""Design a b-value protocol: N volumes, b in [--bmin, --bmax], chosen for a range of tissues.

The design minimises the SNR the protocol needs to estimate f·D* (-condition FDstar), every
parameter (all) or one of f, Dstar, D within --max-error (mean |error|, %) over the tissue grid
-F x -Dstar x -D, as the worst cell (--aggregate max) or the mean over cells (mean):

1. candidates: a multi-start search over the number of volumes per b-value (b on a --b-step grid,
   --fixed-bvals always in) minimising the required SNR of the Cramér-Rao bound of the model
   (the asymptotic, unbiased answer; seconds), half of them also holding the D of the fitter's
   initialisation line (ln S on b >= 400 or 500), which sets its bounds, to the criterion;
2. choice: the --top-k best candidates and the --compare-bvals protocol get the Monte Carlo
   required SNR of ivim_simu_compute_required_snr.py (the toolbox's fitter and bounds, seeded
   noise draws common to every protocol); the candidate with the smallest Monte Carlo aggregate
   wins, ties (e.g. a cell no protocol reaches) broken by the median over cells, a cell not
   reachable counting as infinite.
"""
import sys

from ivim_common import cli, constants, engines, simu_cli
from ivim_common.errors import InputError
from ivim_common.resources import limit_blas_threads

CONDITIONS = (*constants.CONDITIONS, "f", "Dstar", "D")
OUTPUT_NAMES = ("optimized.bval", "optimize_bvals.json", "optimize_bvals.png")
README_BVALS = "5,10,20,30,50,75,150,250,600,700,800"

EXAMPLE = f"""\
example (the README's tissue grid, 11 volumes, b <= 800; about 5 minutes on 2 cores):
  ivim_simu_optimize_bvals.py -model one-step -ofolder design -condition FDstar -n 11 \\
      -F 0.01:10:0.30 -Dstar 3.0e-3:10:35e-3 -D 0.3e-3,1.5e-3 --fixed-bvals 0

outputs in -ofolder: {', '.join(OUTPUT_NAMES)}: the protocol as an FSL .bval row (repeats
included), a JSON report (candidates, bound and Monte Carlo scores, per-cell required SNR and errors
of the chosen and the --compare-bvals protocols, settings, seed, run time) and a figure (b-values;
required-SNR maps of both protocols).
"""


def get_parser():
    parser = cli.ArgumentParser(prog="ivim_simu_optimize_bvals.py", description=__doc__, epilog=EXAMPLE)
    cli.add_model_arguments(parser, "-model", required=True, approaches=("one-step", "two-step"), b_threshold=False,
                            dstar_convention=False)
    cli.add_output_argument(parser, "-ofolder", required=True)
    parser.add_argument("-n", type=cli.positive_int, required=True, dest="n_volumes",
                        help="volumes in all (b-values with repeats)")
    parser.add_argument("--bmin", type=float, default=0.0, help="smallest b-value, s/mm² (default: %(default)g)")
    parser.add_argument("--bmax", type=float, default=800.0, help="largest b-value, s/mm² (default: %(default)g)")
    parser.add_argument("--b-step", type=cli.positive_float, default=5.0,
                        help="the b-values allowed are --bmin, --bmin + step, ... (default: %(default)g)")
    parser.add_argument("--fixed-bvals", type=lambda text: cli.value_list(text, positive=False), default=(),
                        help="comma list of b-values that must be acquired, e.g. 0 (a value twice: two volumes)")
    parser.add_argument("-condition", choices=CONDITIONS, default="FDstar",
                        help="FDstar: error of f·D*; all: the errors of f, D*, D and f·D*; f, Dstar, D: "
                             "that error alone; each <= --max-error (default: %(default)s)")
    parser.add_argument("--max-error", type=cli.positive_float, default=constants.DEFAULT_MAX_ERROR,
                        help="largest acceptable mean |error| in %% (default: %(default)g)")
    parser.add_argument("--aggregate", choices=("max", "mean"), default="mean",
                        help="over the grid cells: the worst cell or the mean (default: %(default)s)")
    parser.add_argument("--compare-bvals", type=cli.bval_list, default=README_BVALS,
                        help="reference protocol scored beside the design (default: %(default)s)")
    parser.add_argument("-F", type=cli.fraction_list, default=simu_cli.DEFAULT_F,
                        help=f"true f values: {simu_cli.RANGE_HELP} (default: %(default)s)")
    parser.add_argument("-Dstar", type=cli.value_list, default=simu_cli.DEFAULT_DSTAR,
                        help=f"true D* values in mm²/s (in excess of D, the toolbox's convention): "
                             f"{simu_cli.RANGE_HELP} (default: %(default)s)")
    parser.add_argument("-D", type=cli.value_list, default=constants.SIMULATION_KINDS["required_snr"].default_D,
                        help=f"true D values in mm²/s: {simu_cli.RANGE_HELP} (default: %(default)s)")
    cli.add_engine_argument(parser)
    parser.add_argument("--noise", choices=constants.NOISE_MODELS, default="gaussian",
                        help="noise of the Monte Carlo (default: %(default)s)")
    parser.add_argument("--n-draws", type=cli.positive_int, default=constants.DEFAULT_N_DRAWS,
                        help="noise draws per grid cell (default: %(default)s)")
    parser.add_argument("--starts", type=cli.positive_int, default=24,
                        help="starts of the bound-based search (default: %(default)s)")
    parser.add_argument("--top-k", type=cli.positive_int, default=4,
                        help="candidates scored by Monte Carlo (default: %(default)s)")
    cli.add_run_arguments(parser)
    cli.add_common_arguments(parser)
    return parser


def _check(args):
    """The budget against the grid and the approach; InputError (one line) for bad input."""
    from ivim_common import design

    design.check_budget(args.n_volumes, args.bmin, args.bmax, args.b_step, tuple(args.fixed_bvals), args.model)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = get_parser()
    args = parser.parse_args(argv)
    cli.check_bounds_version(parser, args, "-model")
    args.bounds_version = args.bounds_version or "2020"
    args.engine_options = engines.options_of(parser, args)
    try:
        _check(args)
    except InputError as exc:
        parser.error(str(exc))          # bad input: one line, exit 2, nothing written
    return cli.run(lambda a: _run(a, parser.prog, argv), args, parser.prog)


def _run(args, prog, argv):
    import dataclasses
    import os

    from ivim_common import compiled, design, io, plotting, voxelpool
    from ivim_common import simulation as simu

    outputs = [os.path.join(args.ofolder, name) for name in OUTPUT_NAMES]
    io.check_outputs(outputs, args.force)
    compiled.prepare([engines.get(args.engine)], announce=args.verbose >= 1)
    grid, fixed, compare = (args.F, args.Dstar, args.D), tuple(float(b) for b in args.fixed_bvals), args.compare_bvals
    sim = simu.Simulation(bvals=compare, F_range=grid[0], Dstar_range=grid[1], D_range=grid[2],
                          approach=args.model, bounds_version=args.bounds_version, engine=args.engine,
                          seed=args.seed, n_draws=args.n_draws, noise=args.noise,
                          jobs=args.jobs or voxelpool.default_jobs(), engine_options=args.engine_options)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.verbose >= 1 else None
    elapsed = simu.timer()
    with voxelpool.WorkerPool(sim.jobs, hint="fewer workers (-j)") as pool:
        sim = dataclasses.replace(sim, pool=pool)   # one pool for the whole run
        result = design.optimize(sim, args.n_volumes, args.bmin, args.bmax, args.b_step, fixed, args.condition,
                                 args.aggregate, args.max_error, args.starts, args.top_k, progress=say)
        reference = design.monte_carlo(sim, compare, args.condition, args.max_error)
    run_time = elapsed()
    settings = dict(n_volumes=args.n_volumes, bmin=args.bmin, bmax=args.bmax, b_step=args.b_step,
                    fixed_bvals=list(fixed), condition=args.condition, max_error=args.max_error,
                    aggregate=args.aggregate, starts=args.starts, top_k=args.top_k, compare_bvals=compare.tolist())
    doc = design.report(sim, result, reference, settings, run_time)
    best = result["candidates"][result["best"]]
    doc = {**io.provenance(prog, argv), **io.model_record(args.model, args.bounds_version), **doc}
    with io.staged_outputs(outputs, force=args.force) as tmp:
        with open(tmp[outputs[0]], "w", encoding="utf-8") as f:
            f.write(" ".join(f"{b:g}" for b in best["bvals"]) + "\n")
        io.write_json(tmp[outputs[1]], doc)
        plotting.design_figure(grid, best["bvals"], best["min_snr"], compare, reference["min_snr"],
                               f"{args.model}, -condition {args.condition}").savefig(tmp[outputs[2]], dpi=110)
    if args.verbose >= 1:
        print(design.summary_text(doc))
        print(f"wrote {', '.join(outputs)} in {run_time:.1f} s")


if __name__ == "__main__":
    limit_blas_threads()  # before numpy loads
    sys.exit(main())
