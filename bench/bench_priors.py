#!/usr/bin/env python
"""The Bayesian engine's voxel-wise priors and point estimates in every box, against least squares.

Issue 23's phantom: S0 = 1000, 12 b-values 0-800, Rician noise σ = S0/SNR (SNR 30), truth
drawn uniformly: f 0.03-0.18, D 0.5-2.0e-3, D*ₚ = D + (10-40)e-3 mm²/s; every fit in the OSIPI
convention (D*ₚ), through the API (``api.fit_voxels``) as ivim_fitting.py runs it.  For each box
(the 2020, 2019 and osipi presets, and user bounds) the table gives the median |relative error|
of f / D / D*ₚ of the fast engine's least squares and of the posterior with each prior and point
estimate, the ratios to least squares (the issue's targets: <= 1.0 for each, <= 0.8 for f and
D*ₚ), and the coverage of the truth by the 95 % credible intervals (a truth outside the box
counts as it comes); µs/voxel of CPU time in one process, the first two rows of a box as
ivim_fitting.py fits (IvimModel, trust maps included: their ratio is the engine's cost), the
others the engine alone.

    python bench/bench_priors.py              # 4 000 voxels (about a minute on 2 cores)
    python bench/bench_priors.py -n 20000
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ivim_common.resources  # noqa: E402

ivim_common.resources.limit_blas_threads()  # one BLAS thread, as the scripts: before numpy loads
from ivim_common import IvimModel, api, model  # noqa: E402
from ivim_common.engines import bayes  # noqa: E402

import numpy as np  # noqa: E402

BVALS = np.array([0, 5, 10, 20, 30, 50, 75, 150, 250, 600, 700, 800], dtype=float)
BOXES = {        # label: (bounds_version, user bounds in the OSIPI convention)
    "2020": ("2020", None),
    "2019": ("2019", None),
    "osipi": ("osipi", None),
    "--bounds f=0:0.5,Dstar=0.003:0.25,D=0.0002:0.004": ("2020", {"f": (0, 0.5), "Dstar": (0.003, 0.25),
                                                                  "D": (0.0002, 0.004)}),
}
PRIORS = {       # label: prior table (--prior uniform and log, and the variants measured)
    "uniform in D*p (uniform; the default before)": bayes.uniform_prior(**bayes.UNIFORM),
    "uniform in log D*p, f flat": bayes.uniform_prior("log"),
    "uniform in log D and log D*p, f flat": bayes.uniform_prior("log", "log"),
    "uniform in log D*p, f falling as 1 - f (log)": bayes.uniform_prior(**bayes.SCALE_FREE),
}


def phantom(n, snr, seed):
    """Truth (n, 4: S0, D, f, D*ₚ) and Rician signal from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    d, f, excess = rng.uniform(0.5e-3, 2.0e-3, n), rng.uniform(0.03, 0.18, n), rng.uniform(10e-3, 40e-3, n)
    truth = np.column_stack([np.full(n, 1000.0), d, f, d + excess])
    clean = model.ivim_signal(BVALS, 1000.0, d, f, excess)
    sigma = 1000.0 / snr
    return truth, np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))


def fit(signal, box, engine, **options):
    """One method's maps in one box: the engine's chunk function (options: its keywords)."""
    version, bounds = BOXES[box]
    bounds = {k: (*v, None) for k, v in bounds.items()} if bounds else None
    return api.fit_voxels(BVALS, signal, "one-step", version, engine, bounds=bounds, dstar_convention="osipi",
                          engine_options=options or None, quality=False)


def fit_as_users(signal, box, engine, **options):
    """The maps as ivim_fitting.py makes them (IvimModel, trust maps included), one process."""
    version, bounds = BOXES[box]
    return IvimModel(BVALS, "one-step", version, engine, bounds, "osipi", **options).fit_voxels(signal)


def errors(out, truth):
    """Median |relative error| of f, D, D*ₚ and, where there are intervals, their coverage."""
    est = [out["Fivim"], out["D"], out["Dstar"]]
    err = [np.nanmedian(np.abs(e - t) / t) for e, t in zip(est, truth[:, [2, 1, 3]].T)]
    cov = []
    if "Fivim_ci_low" in out:
        for name, t in (("Fivim", truth[:, 2]), ("D", truth[:, 1]), ("Dstar", truth[:, 3])):
            cov.append(np.mean((out[f"{name}_ci_low"] <= t) & (t <= out[f"{name}_ci_high"])))
    return err, cov


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--n-voxels", type=int, default=4000)
    parser.add_argument("--snr", type=float, default=30)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--estimates", nargs="+", choices=tuple(bayes.ESTIMATES), default=tuple(bayes.ESTIMATES))
    args = parser.parse_args(argv)
    truth, signal = phantom(args.n_voxels, args.snr, args.seed)
    bayes.prepare()
    fit_as_users(signal[:20], "2020", "fast")             # compiled or loaded, not timed
    fit_as_users(signal[:20], "2020", "bayes")
    print(f"{args.n_voxels} voxels, SNR {args.snr:g} Rician, seed {args.seed}; median |relative error| "
          "f / D / D*p; ratio to least squares in the same box; coverage of the 95 % intervals\n")
    print("| box | method | µs/voxel | f / D / D*p | ratio to LS | coverage f / D / D*p |")
    print("|---|---|---|---|---|---|")

    def row(box, label, out, seconds, ls=None):
        err, cov = errors(out, truth)
        ratio = " / ".join(f"{e / r:.2f}" for e, r in zip(err, ls)) if ls else ""
        print(f"| {box} | {label} | {1e6 * seconds / len(signal):.1f} | {' / '.join(f'{e:.3f}' for e in err)} | "
              f"{ratio} | {' / '.join(f'{c:.2f}' for c in cov)} |", flush=True)
        return err

    for box in BOXES:
        out, seconds = timed(fit_as_users, signal, box, "fast")
        ls = row(box, "least squares (fast engine, as ivim_fitting.py)", out, seconds)
        out, seconds = timed(fit_as_users, signal, box, "bayes")
        row(box, "**bayes, --prior auto (default, as ivim_fitting.py)**", out, seconds, ls)
        for prior_name, table in PRIORS.items():
            for estimate in args.estimates:
                out, seconds = timed(fit, signal, box, "bayes", prior=table, estimate=estimate)
                row(box, f"{prior_name}, posterior {estimate}", out, seconds, ls)


def timed(func, *args, **kwargs):
    """func's result and the CPU seconds it took (other tenants of the machine add none)."""
    t0 = time.process_time()
    out = func(*args, **kwargs)
    return out, time.process_time() - t0


if __name__ == "__main__":
    main()
