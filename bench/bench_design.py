"""Benchmark of the protocol design (ivim_simu_optimize_bvals.py) and of published designs.

For each configuration: the design script as its own process (wall time printed), then the
Monte Carlo required SNR (same grid, seed, draws and fitter) of two published designs:

* Jalnefjord's ``ivim`` package, ``ivim.optimize.crlb(D, f, 'diffusive', bmax=800, Dstar=...)`` over
  every cell of the grid, rounded to 11 volumes (largest remainder) and to 5 s/mm²; its diffusive
  model decays the perfusing pool with D*_ivim + 1.75e-3, ours with D + D*, so D*_ivim = D + D* -
  1.75e-3 (the b-values below were computed so; ``ivim-mri`` is not a dependency);
* Jalnefjord et al. MRM 2019, b = 0, 200, 800 in about 1:2:2 (11 volumes: 2, 5, 4), a design for a
  segmented fit of D and f only: it has 3 distinct b-values, fewer than the 4 parameters one-step
  fits, and one b-value >= 500, fewer than the 2 two-step needs to fit D.

Prints one table per configuration (median and worst reachable required SNR, cells not reachable,
median change against the README protocol) and the bound / Monte Carlo ratio of every reachable
cell; with --keep, also crlb_vs_mc.png (bound against Monte Carlo, cell by cell, README grid).
It is not a test: it prints what it measured (about 25 minutes on 2 cores).

    PYTHONPATH=. python bench/bench_design.py [--keep DIR] [--only readme,liver,two-step] [-j 2]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_GRID = ["-F", "0.01:10:0.30", "-Dstar", "3.0e-3:10:35e-3", "-D", "0.3e-3,1.5e-3"]
LIVER_GRID = ["-F", "0.1:5:0.3", "-Dstar", "20e-3:7:80e-3", "-D", "1.0e-3,1.5e-3"]
CONFIGS = {
    "readme": ("one-step", README_GRID, "0,0,70,70,70,360,360,360,360,800,800"),
    "liver": ("one-step", LIVER_GRID, "0,0,20,20,20,130,130,130,130,800,800"),
    "two-step": ("two-step", README_GRID, "0,0,70,70,70,360,360,360,360,800,800"),
}
JALNEFJORD_2019 = "0,0,200,200,200,200,200,800,800,800,800"


def _grid(args):
    from ivim_common import cli

    values = dict(zip(args[::2], args[1::2]))
    return tuple(cli.value_list(values[k]) for k in ("-F", "-Dstar", "-D"))


def _row(name, bvals, min_snr, reference_median):
    snr = np.where(np.isnan(min_snr), np.inf, min_snr).ravel()
    finite = snr[np.isfinite(snr)]
    median = np.median(snr)
    change = 100 * (median / reference_median - 1) if np.isfinite(median) else float("nan")
    return (f"| {name} | {bvals} | {median:.4g} | {finite.max() if finite.size else float('nan'):.4g} | "
            f"{snr.size - finite.size}/{snr.size} | {change:+.1f} % |")


def run_config(name, out, jobs):
    from ivim_common import design
    from ivim_common import simulation as simu

    approach, grid_args, ivim_bvals = CONFIGS[name]
    folder = os.path.join(out, name)
    cmd = [sys.executable, os.path.join(ROOT, "ivim_simu_optimize_bvals.py"), "-model", approach, "-ofolder",
           folder, "-condition", "FDstar", "-n", "11", *grid_args, "-j", str(jobs), "-v", "0", "--force"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    with open(os.path.join(folder, "optimize_bvals.json"), encoding="utf-8") as f:
        doc = json.load(f)
    grid = _grid(grid_args)
    sim = simu.Simulation(bvals=np.zeros(4), F_range=grid[0], Dstar_range=grid[1], D_range=grid[2],
                          approach=approach, jobs=jobs)
    ref_median = doc["reference"]["monte_carlo"]["median"]
    print(f"\n### {name}: {approach}, {' '.join(grid_args)}, -condition FDstar, 11 volumes, b <= 800; "
          f"design found in {wall:.0f} s (process wall time)\n")
    print("| protocol | b-values | median required SNR | worst reachable | not reachable | median vs README |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key in ("optimized", "reference"):
        rec = doc[key]
        print(_row("designed" if key == "optimized" else "README", ",".join(f"{b:g}" for b in rec["bvals"]),
                   np.array(rec["min_snr"], dtype=float), ref_median))
    for label, text in (("ivim CRLB optimum", ivim_bvals), ("0/200/800 1:2:2", JALNEFJORD_2019)):
        mc = design.monte_carlo(sim, np.array(text.split(","), dtype=float))
        print(_row(label, text, mc["min_snr"], ref_median))
    for key in ("optimized", "reference"):
        ratio = (np.array(doc[key]["crlb_min_snr"], dtype=float) / np.array(doc[key]["min_snr"], dtype=float)).ravel()
        ratio = ratio[np.isfinite(ratio)]
        print(f"\nbound / Monte Carlo required SNR, {key}, {ratio.size} reachable cells: 5/25/50/75/95th "
              f"percentiles {np.round(np.percentile(ratio, [5, 25, 50, 75, 95]), 2).tolist()}")
    return doc


def crlb_vs_mc_figure(doc, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for key, marker in (("reference", "o"), ("optimized", "^")):
        mc = np.array(doc[key]["min_snr"], dtype=float).ravel()
        bound = np.array(doc[key]["crlb_min_snr"], dtype=float).ravel()
        ax.loglog(mc, bound, marker, ms=4, alpha=0.6, label="README protocol" if key == "reference" else "designed")
    lim = ax.get_xlim()
    ax.plot(lim, lim, "k-", lw=0.8)
    ax.set_xlabel("required SNR, Monte Carlo (fast engine, one-step 2020)")
    ax.set_ylabel("required SNR, Cramér-Rao bound")
    ax.set_title("f·D* within 10 %, README grid (unreachable cells not shown)", fontsize=9)
    ax.legend()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="folder for the outputs (default: a temporary one, removed)")
    parser.add_argument("--only", default=",".join(CONFIGS), help="configurations (default: %(default)s)")
    parser.add_argument("-j", type=int, default=2, help="worker processes (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or tmp
        for name in args.only.split(","):
            doc = run_config(name, out, args.j)
            if name == "readme" and args.keep:
                crlb_vs_mc_figure(doc, os.path.join(out, "crlb_vs_mc.png"))


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
