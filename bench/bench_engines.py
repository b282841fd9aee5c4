#!/usr/bin/env python
"""Benchmark of the fitting engines on a seeded synthetic phantom: speed, RSS and accuracy.

Every figure is measured in this one run, on this machine, in one process unless said:
the fast engine, the lmfit reference (differential evolution + ±5 % refinement, as the original
toolbox) on a subsample, and plain lmfit ``leastsq`` from the same nominal start values and
bounds (no refinement) on the same subsample.  The fast engine (and osipy) are timed as the
best of three runs: other tenants of a shared machine only ever add time.  The reference and
leastsq (minutes) are timed once, which can only favour the fast engine in the ratios, by as
much as that noise (a few per cent here).

    python bench/bench_engines.py                 # full run (about 10-20 min on 2 cores)
    python bench/bench_engines.py --quick         # a smoke run (about 1 min)

Phantom: S0 = 1000, f ~ U[0.03, 0.18], D ~ U[0.4, 2.0]e-3, D* ~ U[8, 35]e-3 mm²/s (our
model's D*, in excess of D), Rician noise sigma = S0/SNR, two b-value sets: the test data's
(no b = 0) and the same with b = 0 added.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ivim_common.resources  # noqa: E402

ivim_common.resources.limit_blas_threads()  # one BLAS thread, as the scripts: before numpy loads
from ivim_common import IvimModel, api, model  # noqa: E402

import numpy as np  # noqa: E402

BSETS = {
    "test_data": [5, 10, 20, 30, 50, 75, 150, 250, 600, 700, 800],
    "with_b0": [0, 5, 10, 20, 30, 50, 75, 150, 250, 600, 700, 800],
}
TRUTH_RANGES = {"Fivim": (0.03, 0.18), "D": (0.4e-3, 2.0e-3), "Dstar": (8e-3, 35e-3)}
S0_TRUE = 1000.0


def phantom(bvals, n, snr, seed):
    """Truth (n, 4) and Rician-noise signal (n, n_b), from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    truth = np.column_stack([np.full(n, S0_TRUE)] + [rng.uniform(*TRUTH_RANGES[k], n)
                                                      for k in ("D", "Fivim", "Dstar")])
    clean = model.ivim_signal(bvals, *truth.T)
    sigma = S0_TRUE / snr
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    return truth, noisy


def rss_of(bvals, signal, params):
    resid = model.ivim_signal(bvals, *params.T) - signal
    return np.einsum("ij,ij->i", resid, resid)


def as_params(out):
    return np.column_stack([out[k] for k in model.PARAM_NAMES])


def plain_leastsq(bvals, signal, approach, bounds_version):
    """lmfit 'leastsq' per voxel from the nominal start values and bounds (no refinement)."""
    import lmfit

    cfg = model.settings(approach, bounds_version)
    dinit, s0_1mf = model.initial_estimate(bvals, signal, cfg["bval_threshold"])
    init, lo, hi, vary = model.nominal_bounds(approach, bounds_version, dinit, s0_1mf)
    out = np.empty_like(init)
    for i, y in enumerate(signal):
        params = lmfit.Parameters()
        for j, name in enumerate(model.PARAM_NAMES):
            if vary[j]:
                params.add(name, value=init[i, j], min=lo[i, j], max=hi[i, j])
            else:
                params.add(name, value=init[i, j], vary=False)
        res = lmfit.minimize(lambda p: model.ivim_signal(bvals, *[p[k].value for k in model.PARAM_NAMES]) - y,
                             params, method="leastsq")
        out[i] = [res.params[k].value for k in model.PARAM_NAMES]
    return out


def timed(func):
    t0, c0 = time.perf_counter(), time.process_time()
    result = func()
    return result, time.perf_counter() - t0, time.process_time() - c0


def best_of(func, repeats=3):
    """The result and the shortest wall time of `repeats` runs (other tenants of a shared
    machine only ever add time)."""
    runs = [timed(func) for _ in range(repeats)]
    return runs[0][0], min(t for _, t, _ in runs)


def rel_err_stats(est, truth):
    """Median and IQR of |est - truth| / truth for f, D, D*."""
    stats = {}
    for j, name in ((2, "Fivim"), (1, "D"), (3, "Dstar")):
        e = np.abs(est[:, j] - truth[:, j]) / truth[:, j]
        q25, q50, q75 = np.nanpercentile(e, [25, 50, 75])
        stats[name] = (q50, q75 - q25)
    return stats


def compare(args, approach, bounds_version, report):
    print(f"\n=== {approach}" + (f", bounds {bounds_version}" if approach == "one-step" else "")
          + f" — fast on {args.n_voxels} voxels per case, reference and leastsq on {args.n_ref}")
    print(f"{'case':<22}{'fast µs/vox':>12}{'ref µs/vox':>12}{'lsq µs/vox':>12}{'ref/fast':>10}{'lsq/fast':>10}"
          f"{'fast≤ref':>10}{'fast>1%':>9}{'lsq≤ref':>9}{'lsq>1%':>8}")
    totals = {"fast": [0.0, 0], "ref": [0.0, 0], "lsq": [0.0, 0]}
    pooled = {"truth": [], "fast": [], "ref": [], "lsq": [], "ratio_fast": [], "ratio_lsq": []}
    for bset_name, bset in BSETS.items():
        bvals = np.asarray(bset, dtype=float)
        for snr in args.snr:
            seed = args.seed + 1000 * int(snr) + len(bset)
            truth, signal = phantom(bvals, args.n_voxels, snr, seed)
            sub = slice(0, args.n_ref)
            api.fit_voxels(bvals, signal[:3], approach, bounds_version, "fast")   # compiled, not timed
            fast, t_fast = best_of(lambda: api.fit_voxels(bvals, signal, approach, bounds_version, "fast"))
            ref, t_ref, _ = timed(lambda: api.fit_voxels(bvals, signal[sub], approach, bounds_version, "lmfit",
                                                         seed=args.seed))
            lsq, t_lsq, _ = timed(lambda: plain_leastsq(bvals, signal[sub], approach, bounds_version))
            p_fast, p_ref = as_params(fast), as_params(ref)
            r_ref = rss_of(bvals, signal[sub], p_ref)
            ratio_fast = rss_of(bvals, signal[sub], p_fast[sub]) / r_ref
            ratio_lsq = rss_of(bvals, signal[sub], lsq) / r_ref
            us = {k: 1e6 * t / n for k, t, n in (("fast", t_fast, args.n_voxels), ("ref", t_ref, args.n_ref),
                                                  ("lsq", t_lsq, args.n_ref))}
            for k, t, n in (("fast", t_fast, args.n_voxels), ("ref", t_ref, args.n_ref), ("lsq", t_lsq, args.n_ref)):
                totals[k][0] += t
                totals[k][1] += n
            print(f"{bset_name + ' SNR ' + str(int(snr)):<22}{us['fast']:>12.1f}{us['ref']:>12.0f}{us['lsq']:>12.0f}"
                  f"{us['ref'] / us['fast']:>10.0f}{us['lsq'] / us['fast']:>10.0f}"
                  f"{np.mean(ratio_fast <= 1 + 1e-6):>10.4f}{np.mean(ratio_fast > 1.01):>9.4f}"
                  f"{np.mean(ratio_lsq <= 1 + 1e-6):>9.4f}{np.mean(ratio_lsq > 1.01):>8.4f}")
            for k, v in (("truth", truth[sub]), ("fast", p_fast[sub]), ("ref", p_ref), ("lsq", lsq),
                         ("ratio_fast", ratio_fast), ("ratio_lsq", ratio_lsq)):
                pooled[k].append(v)
    pooled = {k: np.concatenate(v) for k, v in pooled.items()}
    us = {k: 1e6 * t / n for k, (t, n) in totals.items()}
    rf, rl = pooled["ratio_fast"], pooled["ratio_lsq"]
    print(f"{'all cases':<22}{us['fast']:>12.1f}{us['ref']:>12.0f}{us['lsq']:>12.0f}{us['ref'] / us['fast']:>10.0f}"
          f"{us['lsq'] / us['fast']:>10.0f}{np.mean(rf <= 1 + 1e-6):>10.4f}{np.mean(rf > 1.01):>9.4f}"
          f"{np.mean(rl <= 1 + 1e-6):>9.4f}{np.mean(rl > 1.01):>8.4f}")
    print(f"fast RSS / reference RSS: worst {rf.max():.6f}, best {rf.min():.6f}, median {np.median(rf):.9f}")
    print("relative error against truth on the subsample, median [IQR]:")
    errs = {}
    for k in ("fast", "ref", "lsq"):
        errs[k] = rel_err_stats(pooled[k], pooled["truth"])
        print(f"  {k:<5}" + "  ".join(f"{name} {m:.4f} [{iqr:.4f}]" for name, (m, iqr) in errs[k].items()))
    report[f"{approach} {bounds_version}"] = dict(
        us_per_voxel=us, ratio_ref_over_fast=us["ref"] / us["fast"], ratio_lsq_over_fast=us["lsq"] / us["fast"],
        share_fast_rss_le_ref=float(np.mean(rf <= 1 + 1e-6)), share_fast_rss_gt_1pct=float(np.mean(rf > 1.01)),
        worst_fast_rss_ratio=float(rf.max()), share_lsq_rss_le_ref=float(np.mean(rl <= 1 + 1e-6)),
        share_lsq_rss_gt_1pct=float(np.mean(rl > 1.01)), rel_err_median_iqr=errs, n_ref=int(len(rf)))


def peers(args, report):
    """dipy's IvimModel (trr) and osipy's batched fit_ivim (Python >= 3.12), where installed;
    the fast engine and osipy each timed as the best of three runs."""
    bvals = np.asarray(BSETS["with_b0"], dtype=float)
    truth, signal = phantom(bvals, args.n_voxels, 50, args.seed)
    print("\n=== peers (with_b0, SNR 50), where installed")
    api.fit_voxels(bvals, signal[:3], "one-step", "2020", "fast")            # compiled, not timed
    fast, t_fast = best_of(lambda: api.fit_voxels(bvals, signal, "one-step", "2020", "fast"))
    report["peers"] = {"fast one-step 2020": 1e6 * t_fast / args.n_voxels}
    print(f"  fast (one-step 2020): {1e6 * t_fast / args.n_voxels:.1f} µs/voxel on {args.n_voxels} voxels; "
          "median rel. error f, D, D*: "
          + ", ".join(f"{m:.3f}" for m, _ in rel_err_stats(as_params(fast), truth).values()))
    try:
        import osipy.ivim as osipy_ivim
    except ImportError:
        print("  osipy: not installed (it needs Python >= 3.12)")
    else:
        # osipy: S0·((1-f)·exp(-b·D) + f·exp(-b·D*p)), so our D* = D*p - D; its default bounds
        # D [1e-4, 5e-3], D*p [2e-3, 0.1], f [0, 0.7]; batched Levenberg-Marquardt, one start.
        for method in ("segmented", "full"):
            params = osipy_ivim.IVIMFitParams(method=osipy_ivim.FittingMethod(method))
            osipy_ivim.fit_ivim(signal[:3], bvals, params=params)          # warm-up, not timed
            res, t = best_of(lambda: osipy_ivim.fit_ivim(signal, bvals, params=params))
            report["peers"][f"osipy {method}"] = 1e6 * t / len(signal)
            d, dp = (np.asarray(m.values, dtype=float).ravel() for m in (res.d_map, res.d_star_map))
            ours = np.column_stack([np.asarray(res.s0_map.values, dtype=float).ravel(), d,
                                    np.asarray(res.f_map.values, dtype=float).ravel(), dp - d])
            print(f"  osipy {method}: {1e6 * t / len(signal):.1f} µs/voxel on {len(signal)} voxels "
                  f"(fast / osipy time {t_fast / t:.2f}); median rel. error f, D, D*: "
                  + ", ".join(f"{m:.3f}" for m, _ in rel_err_stats(ours, truth).values()))
    try:
        from dipy.core.gradients import gradient_table
        from dipy.reconst.ivim import IvimModel
    except ImportError:
        print("  dipy: not installed")
    else:
        truth, signal = truth[:args.n_ref], signal[:args.n_ref]
        gtab = gradient_table(bvals, bvecs=np.tile([0, 0, 1.0], (len(bvals), 1)), b0_threshold=0)
        res, t, _ = timed(lambda: IvimModel(gtab, fit_method="trr").fit(signal))
        # dipy: S0·(f·exp(-b·D*p) + (1-f)·exp(-b·D)), so our D* = D*p - D; default bounds f <= 0.2
        p = res.model_params
        ours = np.column_stack([p[:, 0], p[:, 3], p[:, 1], p[:, 2] - p[:, 3]])
        report["peers"]["dipy trr"] = 1e6 * t / len(signal)
        print(f"  dipy trr: {1e6 * t / len(signal):.0f} µs/voxel on the first {len(signal)}; median rel. error "
              "f, D, D*: " + ", ".join(f"{m:.3f}" for m, _ in rel_err_stats(ours, truth).values()))


def scaling_worker(n, jobs):
    """Run in a fresh process: fit n phantom voxels with the voxel pool; print wall time, peak MB."""
    bvals = np.asarray(BSETS["test_data"], dtype=float)
    _, signal = phantom(bvals, n, 50, 1)
    t0 = time.perf_counter()
    IvimModel(bvals).fit_voxels(signal, jobs=jobs)
    wall = time.perf_counter() - t0
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    print(wall, peak)


def scaling(args, report):
    """Wall time and peak memory of fitting N voxels in a fresh process, 1 and 2 processes."""
    print("\n=== scaling (fresh process each; one-step 2020, test-data b-values, SNR 50; "
          "peak = the largest resident set of one process, phantom included)")
    rows = []
    for n in args.scaling:
        for jobs in (1, 2):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--scaling-worker", str(n), str(jobs)],
                                 capture_output=True, text=True, check=True).stdout.split()
            wall, peak_mb = float(out[0]), float(out[1])
            rows.append(dict(n=n, jobs=jobs, wall_s=wall, us_per_voxel=1e6 * wall / n, peak_mb=peak_mb))
            print(f"  {n:>8} voxels, {jobs} process(es): {wall:8.2f} s, {1e6 * wall / n:6.1f} µs/voxel, "
                  f"peak {peak_mb:.0f} MB")
    report["scaling"] = rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-voxels", type=int, default=20000, help="phantom voxels per case (fast engine)")
    parser.add_argument("--n-ref", type=int, default=60, help="subsample per case for lmfit (reference, leastsq)")
    parser.add_argument("--snr", type=float, nargs="+", default=[20, 50, 200])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scaling", type=int, nargs="*", default=[1000, 10000, 100000, 1000000])
    parser.add_argument("--approaches", nargs="*", default=["one-step:2020", "one-step:2019", "two-step:2020"],
                        help="approach:bounds cases to compare (none: peers and scaling only)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--scaling-worker", nargs=2, type=int, metavar=("N", "JOBS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scaling_worker:
        scaling_worker(*args.scaling_worker)
        return 0
    if args.quick:
        args.n_voxels, args.n_ref, args.scaling = 2000, 5, [1000, 10000]
    import numba
    print(f"numpy {np.__version__}, numba {numba.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    report = {}
    for item in args.approaches:
        approach, bounds_version = item.split(":")
        compare(args, approach, bounds_version, report)
    peers(args, report)
    if args.scaling:
        scaling(args, report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
