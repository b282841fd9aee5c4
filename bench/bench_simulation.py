"""Benchmark of the simulation tools against the original toolbox's published results.

Runs, each as its own process (the wall time printed is the process's):

1. the original README's required-SNR example (one-step, FDstar, 10 f x 10 D* x 2 D, 11 b-values,
   1000 draws) with --bounds-version 2019, compared with the reference min_snr (ratio table and the
   share of cells with |ours/reference - 1| <= 0.15 among cells where both are finite and < 1e5);
2. the no-noise one-step errors (2019 bounds, same b-values, default 10 x 10 x 10 grid) against
   the reference fits;
3. the original README's two-step example at SNR 180 (1000 draws), with the reference's D0 titles.

Needs the fast engine.  It is not a test: it prints what it measured.  The reference results
(--reference) are not part of the repository; without them, [1] and [2] print our results only.

    PYTHONPATH=. python bench/bench_simulation.py [--keep DIR] [--only required_snr,nonoise,snr180]
        [--reference DIR]
"""
import argparse
import functools
import glob
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REFERENCE = os.path.normpath(os.path.join(ROOT, os.pardir, "shared", "test_data_reference",
                                                  "results_you_should_get"))
BVALS = "5,10,20,30,50,75,150,250,600,700,800"
RUNS = {
    "required_snr": ["ivim_simu_compute_required_snr.py", "-model", "one-step", "-condition", "FDstar",
                     "-F", "0.01:10:0.30", "-Dstar", "3.0e-3:10:35e-3", "-D", "0.3e-3,1.5e-3",
                     "--bounds-version", "2019"],
    "nonoise": ["ivim_simu_compute_error_nonoise.py", "-model", "one-step", "--bounds-version", "2019"],
    "snr180": ["ivim_simu_compute_error_noise.py", "-model", "two-step", "-snr", "180"],
}
# Titles of the reference figure two_step_fit_err_snr180/error_plot_sim_D0.png: median [min-max] %
SNR180_REFERENCE_D0 = {"f": (14.6, 4.9, 432.8), "Dstar": (25.4, 9.5, 347.1), "D": (15.7, 12.6, 51.3),
                       "fDstar": (14.6, 4.9, 185.7)}


def run(name, folder):
    """Run one script as a process; returns (loaded arrays, wall time in s)."""
    out = os.path.join(folder, name)
    cmd = [sys.executable, os.path.join(ROOT, RUNS[name][0])] + RUNS[name][1:] + [
        "-bval", BVALS, "-ofolder", out, "-v", "0"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - t0
    (path,) = glob.glob(os.path.join(out, "sim_results_*.npz"))
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}, wall


def reference(folder, sub):
    """The reference arrays of one example, or None (with a note) if they are not there."""
    paths = glob.glob(os.path.join(folder, sub, "*.npz"))
    if len(paths) != 1:
        print(f"  reference {os.path.join(folder, sub)}/*.npz not found: comparison skipped")
        return None
    with np.load(paths[0], allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def report_required_snr(ours, wall, reference_folder):
    print(f"\n[1] required SNR, README example, one-step 2019, FDstar, 1000 draws: {wall:.1f} s wall")
    a = ours["min_snr"]
    ref = reference(reference_folder, "required_snr_one_step_fit")
    if ref is None:
        for i_d, d in enumerate(ours["D_range"]):
            finite = a[..., i_d][np.isfinite(a[..., i_d])]
            print(f"  D = {d:.3g} mm²/s: ours median {np.median(finite):.4g}, "
                  f"{np.isnan(a[..., i_d]).sum()} not reachable")
        return
    b = ref["min_snr"]
    ratio = a / b
    usable = np.isfinite(a) & np.isfinite(b) & (a < 1e5) & (b < 1e5)
    within = np.abs(ratio - 1) <= 0.15
    for i_d, d in enumerate(ours["D_range"]):
        print(f"  D = {d:.3g} mm²/s: ours/reference min_snr (rows f, columns D* in 1e-3 mm²/s)")
        print("  f \\ D*  " + " ".join(f"{v * 1e3:6.3g}" for v in ours["Dstar_range"]))
        for i_f, f in enumerate(ours["F_range"]):
            print(f"  {f:6.3g}  " + " ".join(f"{r:6.2f}" for r in ratio[i_f, :, i_d]))
        finite = a[..., i_d][np.isfinite(a[..., i_d])]
        print(f"  ours: median {np.median(finite):.4g}, {np.isnan(a[..., i_d]).sum()} not reachable; "
              f"reference median {np.median(b[..., i_d]):.4g}")
    share = within[usable].mean()
    print(f"  |ratio - 1| <= 0.15 on {within[usable].sum()}/{usable.sum()} usable cells = {100 * share:.1f} % "
          f"(target >= 80 %); median ratio {np.median(ratio[usable]):.3f}")
    err = ours["mean_err_at_min_snr"][3]
    print(f"  f·D* error at min_snr: {np.nanmin(err):.3f} .. {np.nanmax(err):.3f} %")


def report_nonoise(ours, wall, reference_folder):
    print(f"\n[2] no-noise errors, one-step 2019, default grid (1000 cells): {wall:.1f} s wall")
    ref = reference(reference_folder, "one_step_fit_err")
    if ref is not None:
        true = {"f": ref["true_Fivim"], "Dstar": ref["true_Dstar"], "D": ref["true_D"]}
        fit = {"f": ref["fit_Fivim"], "Dstar": ref["fit_Dstar"], "D": ref["fit_D"]}
        true["fDstar"], fit["fDstar"] = true["f"] * true["Dstar"], fit["f"] * fit["Dstar"]
    for j, name in enumerate(ours["err_order"]):
        name = str(name)
        err = ours["mean_abs_err"][j]
        line = (f"  {name:6s} ours max {np.nanmax(err):.3g} %, median {np.nanmedian(err):.3g} %, "
                f"{np.isnan(err).sum()} failed")
        if ref is not None:
            line += f" | reference max {100 * np.max(np.abs(fit[name] - true[name]) / true[name]):.3g} %"
        print(line)
    print(f"  all ours below 0.01 %: {bool(np.nanmax(ours['mean_abs_err']) < 0.01)}")


def report_snr180(ours, wall):
    print(f"\n[3] two-step, SNR 180, 1000 draws, 10 f x 10 D* x 2 D: {wall:.1f} s wall")
    for i_d, d in enumerate(ours["D_range"]):
        parts = []
        for j, name in enumerate(ours["err_order"]):
            err = ours["mean_abs_err"][j, ..., i_d]
            parts.append(f"{name} {np.nanmedian(err):.3g} [{np.nanmin(err):.3g}-{np.nanmax(err):.3g}]")
        print(f"  D{i_d} = {d:.3g}: ours " + ", ".join(parts))
        if i_d == 0:
            print("       reference " + ", ".join(f"{k} {m} [{lo}-{hi}]" for k, (m, lo, hi)
                                                in SNR180_REFERENCE_D0.items()))
    print(f"  failed fits: {int(ours['n_failed'].sum())} of {ours['n_failed'].size * int(ours['n_noise_draws'])}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="folder for the outputs (default: a temporary folder, removed)")
    parser.add_argument("--only", default=",".join(RUNS), help="comma list of runs (default: all)")
    parser.add_argument("--reference", default=DEFAULT_REFERENCE,
                        help="folder of the original's published results (default: %(default)s)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs")
    reports = {"required_snr": functools.partial(report_required_snr, reference_folder=args.reference),
               "nonoise": functools.partial(report_nonoise, reference_folder=args.reference),
               "snr180": report_snr180}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or tmp
        for name in args.only.split(","):
            reports[name](*run(name, folder))
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
