#!/usr/bin/env python
"""The Bayesian engine's voxel-wise priors and point estimates in every box, against least squares.

Issue 23's phantom: S0 = 1000, 12 b-values 0-800, Rician noise σ = S0/SNR (SNR 30), truth
drawn uniformly: f 0.03-0.18, D 0.5-2.0e-3, D*ₚ = D + (10-40)e-3 mm²/s; every fit in the OSIPI
convention (D*ₚ), through the API (``api.fit_voxels``) as ivim_fitting.py runs it.  For each box
(the 2020, 2019 and osipi presets, and user bounds) the table gives the median |relative error|
of f / D / D*ₚ of the fast engine's least squares and of the posterior with each prior and point
estimate, the ratios to least squares (the issue's targets: <= 1.0 for each, <= 0.8 for f and
D*ₚ), and the coverage of the truth by the 95 % credible intervals; µs/voxel of CPU time.

    python bench/bench_priors.py              # 4 000 voxels (about a minute on 2 cores)
    python bench/bench_priors.py -n 20000
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ivim_common  # noqa: E402

ivim_common.limit_blas_threads()  # one BLAS thread, as the scripts: before numpy loads
from ivim_common import api, model  # noqa: E402
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
PRIORS = {       # label: prior table (the engine's --prior choices and the variants measured)
    "uniform (before)": bayes.uniform_prior("linear", "linear"),
    "log D*p": bayes.uniform_prior("log", "linear"),
    "log D, log D*p": bayes.uniform_prior("log", "log"),
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
    version, bounds = BOXES[box]
    bounds = {k: (*v, None) for k, v in bounds.items()} if bounds else None
    return api.fit_voxels(BVALS, signal, "one-step", version, engine, bounds=bounds, dstar_convention="osipi",
                          engine_options=options or None, quality=False)


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
    fit(signal[:2], "2020", "fast")             # compiled, not timed
    print(f"{args.n_voxels} voxels, SNR {args.snr:g} Rician, seed {args.seed}; median |relative error| "
          "f / D / D*p; ratio to least squares in the same box; coverage of the 95 % intervals\n")
    print("| box | method | µs/voxel | f / D / D*p | ratio to LS | coverage f / D / D*p |")
    print("|---|---|---|---|---|---|")
    for box in BOXES:
        t0 = time.process_time()
        ls, _ = errors(fit(signal, box, "fast"), truth)
        us = 1e6 * (time.process_time() - t0) / len(signal)
        print(f"| {box} | least squares | {us:.1f} | {' / '.join(f'{e:.3f}' for e in ls)} | | |")
        for prior_name, table in PRIORS.items():
            for estimate in args.estimates:
                t0 = time.process_time()
                err, cov = errors(fit(signal, box, "bayes", prior=table, estimate=estimate), truth)
                us = 1e6 * (time.process_time() - t0) / len(signal)
                print(f"| {box} | {prior_name}, {estimate} | {us:.1f} | {' / '.join(f'{e:.3f}' for e in err)} | "
                      f"{' / '.join(f'{e / r:.2f}' for e, r in zip(err, ls))} | "
                      f"{' / '.join(f'{c:.2f}' for c in cov)} |", flush=True)


if __name__ == "__main__":
    main()
