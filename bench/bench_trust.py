"""How far the trust maps can be trusted, and what they cost (issue 15).

Prints, on a seeded phantom (the test data's b-values, one-step 2020, fast engine):
coverage of the 95 % intervals (|p̂ − p| <= 1.96·SD) of S0, D, f, D* over the voxels whose fit
hit no bound, from the Fisher SD and from a residual bootstrap, at SNR 20, 50, 200 with Gaussian
and Rician noise; the model choice on f = 0 and f >= 0.1 voxels at SNR 100; the CPU time of the
default fit with and without the new maps (alternate runs, same process) and of the bootstrap.

    python bench/bench_trust.py [--voxels 4000] [--boot-voxels 150] [--boot 200]
"""
import argparse
import time

import numpy as np

from ivim_common import api, model

BVALS = np.array([5, 10, 20, 30, 50, 75, 150, 250, 600, 700, 800], dtype=float)
S0 = 1000.0


def phantom(n, rng, f_range=(0.05, 0.18)):
    """True (S0, D, f, D*) of n voxels: D 0.5-1.5e-3, f in f_range, D* 10-40e-3 mm²/s."""
    return np.column_stack([np.full(n, S0), rng.uniform(0.5e-3, 1.5e-3, n), rng.uniform(*f_range, n),
                            rng.uniform(10e-3, 40e-3, n)])


def noisy(true, snr, noise, rng):
    clean = model.ivim_signal(BVALS, *true.T)
    sigma = S0 / snr
    real = clean + sigma * rng.standard_normal(clean.shape)
    return real if noise == "gaussian" else np.hypot(real, sigma * rng.standard_normal(clean.shape))


def coverage(out, true):
    est = np.stack([out[p] for p in model.PARAM_NAMES], axis=1)
    sd = np.stack([out[f"{p}_sd"] for p in model.PARAM_NAMES], axis=1)
    clear = (out["bounds_hit"] == 0) & (out["exception"] == 0)
    with np.errstate(invalid="ignore"):
        inside = np.abs(est - true) <= 1.96 * sd
    has = np.isfinite(sd) & clear[:, None]
    return [inside[has[:, j], j].mean() for j in range(4)], clear.mean()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--voxels", type=int, default=4000)
    parser.add_argument("--boot-voxels", type=int, default=150)
    parser.add_argument("--boot", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(20261201)

    print(f"coverage of the 95 % intervals, voxels with no bound hit (Fisher: {args.voxels} voxels; "
          f"bootstrap {args.boot}: {args.boot_voxels} voxels)")
    print(f"{'noise':9} {'SNR':>4} {'SD':10} {'no bound':>8} {'S0':>6} {'D':>6} {'f':>6} {'D*':>6}")
    for noise in ("gaussian", "rician"):
        for snr in (20, 50, 200):
            true = phantom(args.voxels, rng)
            signal = noisy(true, snr, noise, rng)
            cov, clear = coverage(api.fit_voxels(BVALS, signal, seed=1), true)
            print(f"{noise:9} {snr:>4} {'Fisher':10} {clear:8.2f} " + " ".join(f"{c:6.3f}" for c in cov))
            n = args.boot_voxels
            cov, clear = coverage(api.fit_voxels(BVALS, signal[:n], seed=1, bootstrap=args.boot), true[:n])
            print(f"{noise:9} {snr:>4} {'bootstrap':10} {clear:8.2f} " + " ".join(f"{c:6.3f}" for c in cov))

    snr = 100
    for label, f_range, want in (("f = 0", (0.0, 0.0), 0), ("f >= 0.1", (0.1, 0.2), 1)):
        true = phantom(args.voxels, rng, f_range)
        for noise in ("gaussian", "rician"):
            signal = noisy(true, snr, noise, rng)
            for crit in ("aicc", "bic"):
                out = api.fit_voxels(BVALS, signal, model_choice=crit)
                print(f"model choice, {label} voxels, SNR {snr}, {noise}, {crit}: share given {want} = "
                      f"{np.mean(out['model_choice'] == want):.3f}")

    # cost: the same 5000-voxel chunk, with and without the new maps, alternating
    signal = noisy(phantom(5000, rng), 50, "gaussian", rng)
    api.fit_voxels(BVALS, signal)                    # compile/load once
    times = {True: [], False: []}
    for _ in range(6):
        for quality in (False, True):
            t0 = time.process_time()
            api.fit_voxels(BVALS, signal, quality=quality)
            times[quality].append(time.process_time() - t0)
    before, after = (1e6 * np.median(times[q]) / len(signal) for q in (False, True))
    print(f"default fit, CPU µs/voxel (median of 6 alternate runs, 5000 voxels): without the new maps "
          f"{before:.1f}, with them {after:.1f} (+{after - before:.1f}, {100 * (after / before - 1):.0f} %)")
    n = 100
    t0 = time.process_time()
    api.fit_voxels(BVALS, signal[:n], bootstrap=200)
    print(f"bootstrap 200: {1e3 * (time.process_time() - t0) / n:.2f} ms of CPU per voxel ({n} voxels)")


if __name__ == "__main__":
    main()
