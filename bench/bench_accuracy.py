#!/usr/bin/env python
"""Accuracy of our approaches on a seeded phantom family: least squares vs the Bayesian engine.

Every figure is measured in this one run, in one process, on the same voxels for every method:
µs/voxel of CPU time, median |relative error| and median relative bias of f, D and D*ₚ = D + D* (the OSIPI
pseudo-diffusion), and for the Bayesian engine the coverage of the truth by its 95 % credible
intervals.  A truth outside a method's bounds counts as it comes (an interval cannot cover it).

    python bench/bench_accuracy.py            # 20 000 voxels a case (a few minutes on 2 cores)
    python bench/bench_accuracy.py --quick    # 1 500 voxels a case (well under 2 min)

Phantoms (S0 = 1000, 12 b-values with b = 0, σ = S0/SNR, SNR 20, 30, 50, 100, Gaussian and
Rician noise), truth drawn uniformly from:
  issue18: f 0.03-0.18, D 0.5-2.0e-3, D* 10-40e-3 mm²/s (D* in excess of D, as our model);
  off-prior: f 0.05-0.30, D 0.3-2.5e-3, D* 5-30e-3 (f beyond the 2020 bounds, within the 2019 ones;
  neither the uniform prior's ranges nor issue18's).
Methods: our fast least squares (one-step with the 2020 and 2019 bounds, two-step, segmented) and the
Bayesian engine with its uniform prior (in the one-step 2020 and 2019 boxes) and with the
empirical prior from a first least-squares pass (one-step 2020; its time includes that pass).
Peers (dipy, osipy, the ``ivim`` package) are benchmarked in bench/bench_engines.py.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ivim_common.resources  # noqa: E402

ivim_common.resources.limit_blas_threads()  # one BLAS thread, as the scripts: before numpy loads
from ivim_common import api, model  # noqa: E402
from ivim_common.engines import bayes  # noqa: E402

import numpy as np  # noqa: E402

BVALS = np.array([0, 5, 10, 20, 30, 50, 75, 150, 250, 600, 700, 800], dtype=float)
S0_TRUE = 1000.0
TRUTHS = {
    "issue18": {"D": (0.5e-3, 2.0e-3), "Fivim": (0.03, 0.18), "Dstar": (10e-3, 40e-3)},
    "off-prior": {"D": (0.3e-3, 2.5e-3), "Fivim": (0.05, 0.30), "Dstar": (5e-3, 30e-3)},
}
SNRS = (20, 30, 50, 100)
NOISES = ("gaussian", "rician")


def phantom(truth_name, n, snr, noise, seed):
    """Truth (n, 4) and noisy signal (n, n_b) from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    ranges = TRUTHS[truth_name]
    truth = np.column_stack([np.full(n, S0_TRUE)] + [rng.uniform(*ranges[k], n) for k in ("D", "Fivim", "Dstar")])
    clean = model.ivim_signal(BVALS, *truth.T)
    sigma = S0_TRUE / snr
    noisy = clean + rng.normal(0, sigma, clean.shape)
    if noise == "rician":
        return truth, np.hypot(noisy, rng.normal(0, sigma, clean.shape))
    return truth, np.abs(noisy)           # Gaussian, folded at 0 as a magnitude image would


def least_squares(signal, approach, bounds_version):
    out = api.fit_voxels(BVALS, signal, approach, bounds_version, "fast", quality=False)
    return np.column_stack([out[k] for k in model.PARAM_NAMES])


def bayesian(signal, bounds_version, prior_kind):
    """Posterior summaries (n, 4, 5) in the one-step box; prior 'uniform' or 'empirical'."""
    cfg = model.settings("one-step", bounds_version)
    dinit, s0_1mf = model.initial_estimate(BVALS, signal, cfg["bval_threshold"])
    _, lo, hi, _ = model.nominal_bounds("one-step", bounds_version, dinit, s0_1mf)
    if prior_kind == "empirical":
        prior = bayes.empirical_prior(least_squares(signal, "one-step", bounds_version), lo, hi)
    else:
        prior = bayes.uniform_prior()
    lo, hi = bayes.prior_box(lo, hi, prior)
    return bayes.posterior_summaries(BVALS, signal, lo, hi, prior)


METHODS = {
    "LS one-step 2020": lambda s: least_squares(s, "one-step", "2020"),
    "LS one-step 2019": lambda s: least_squares(s, "one-step", "2019"),
    "LS two-step": lambda s: least_squares(s, "two-step", "2020"),
    "LS segmented": lambda s: least_squares(s, "segmented", "2020"),
    "Bayes uniform, 2020 box": lambda s: bayesian(s, "2020", "uniform"),
    "Bayes uniform, 2019 box": lambda s: bayesian(s, "2019", "uniform"),
    "Bayes empirical, 2020 box": lambda s: bayesian(s, "2020", "empirical"),
}


def scores(result, truth):
    """Median |rel err| and median rel bias of f, D, D*ₚ; coverage where result has intervals."""
    est = result[:, 0, :4] if result.ndim == 3 else result
    true_p = truth[:, 1] + truth[:, 3]
    pairs = ((est[:, 2], truth[:, 2]), (est[:, 1], truth[:, 1]), (est[:, 1] + est[:, 3], true_p))
    rel = [(e - t) / t for e, t in pairs]
    row = [np.nanmedian(np.abs(r)) for r in rel] + [np.nanmedian(r) for r in rel]
    if result.ndim == 3:    # columns f, D, D*ₚ of the summaries
        row += [np.mean((result[:, 2, c] <= t) & (t <= result[:, 3, c]))
                for c, t in ((2, truth[:, 2]), (1, truth[:, 1]), (4, true_p))]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 500 voxels a case")
    parser.add_argument("-n", "--n-voxels", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--snr", type=int, nargs="+", default=SNRS)
    parser.add_argument("--noise", nargs="+", choices=NOISES, default=NOISES)
    parser.add_argument("--truth", nargs="+", choices=tuple(TRUTHS), default=tuple(TRUTHS))
    args = parser.parse_args(argv)
    n = 1500 if args.quick else args.n_voxels

    bayes.prepare()
    least_squares(BVALS[None] * 0 + 1000.0, "one-step", "2020")   # compiled, not timed
    print(f"{n} voxels a case, seed {args.seed}; errors are median |relative error|, bias the median "
          "relative error, cov the coverage of the 95 % credible intervals\n")
    print("| truth | noise | SNR | method | µs/voxel (CPU) | f | D | D*p | bias f | bias D | bias D*p | cov f | cov D | cov D*p |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t_i, truth_name in enumerate(TRUTHS):
        for n_i, noise in enumerate(NOISES):
            for snr in SNRS:
                if truth_name not in args.truth or noise not in args.noise or snr not in args.snr:
                    continue      # the seeds stay those of the whole family
                truth, signal = phantom(truth_name, n, snr, noise, args.seed + 1000 * t_i + 100 * n_i + snr)
                for name, method in METHODS.items():
                    t0 = time.process_time()      # CPU time: other tenants of a shared machine add none
                    result = method(signal)
                    us = 1e6 * (time.process_time() - t0) / n
                    row = scores(result, truth)
                    cells = [f"{x:.3f}" for x in row[:3]] + [f"{x:+.3f}" for x in row[3:6]]
                    cells += [f"{x:.3f}" for x in row[6:]] if len(row) > 6 else ["", "", ""]
                    print(f"| {truth_name} | {noise} | {snr} | {name} | {us:.1f} | " + " | ".join(cells) + " |",
                          flush=True)


if __name__ == "__main__":
    main()
