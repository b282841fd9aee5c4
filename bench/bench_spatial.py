#!/usr/bin/env python
"""The spatial prior on a spatially structured phantom (bench/spatial_phantom.py), against least
squares, the voxel-wise posterior with each prior, and ivim-mri's Bayesian fit with and without its
spatial prior (the anchor).

For each case (brain-like, abdomen-like) and SNR (10, 20, 30, 50; Rician), every method fits the
same seeded volume (48 x 48 x 3 voxels, the 'osipi' box, OSIPI convention) through IvimModel.fit in
one process: median |relative error| of f, D and D*ₚ inside the tissues (voxels of one tissue) and
at their edges (partial-volume voxels; their truth is the mean of their parts' parameters), the
Spearman correlation of estimated and true f inside the largest tissue (flattening a tissue to
its mean gives about 0), and CPU seconds.  The issue's targets (brain, SNR 30): the spatial prior's
f error <= 0.6x and D*ₚ error <= 0.8x the voxel-wise posterior's, D no worse, correlation >= 0.3,
time <= 10x.

ivim-mri (MCMC, some 10 ms a voxel) runs on a smaller phantom of the same layout (32 x 32 x 1:
its spatial prior is in-plane), with our voxel-wise and spatial posteriors beside it on that
phantom, in its own environment through bench/ivim_mri_anchor.py if ``--anchor-python`` exists
(default /tmp/ivimmri/bin/python: ``python3 -m venv /tmp/ivimmri && /tmp/ivimmri/bin/pip install
ivim-mri``), else skipped.

    python bench/bench_spatial.py                       # all (some 5 minutes on 2 cores)
    python bench/bench_spatial.py --snr 30 --cases brain --no-anchor
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
import ivim_common.resources  # noqa: E402

ivim_common.resources.limit_blas_threads()  # one BLAS thread, as the scripts: before numpy loads
from ivim_common import IvimModel  # noqa: E402
from spatial_phantom import phantom  # noqa: E402

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

METHODS = {     # label: IvimModel keywords
    "least squares": {"engine": "fast"},
    "bayes uniform (voxel-wise)": {"engine": "bayes", "prior": "uniform"},
    "bayes log = auto here (voxel-wise)": {"engine": "bayes", "prior": "log"},
    "**bayes spatial**": {"engine": "bayes", "prior": "spatial"},
}
ANCHOR_METHODS = ("bayes log = auto here (voxel-wise)", "**bayes spatial**")


def ours(ph, kwargs):
    """Maps (D, f, D*ₚ; with intervals (2, ...) where the engine gives them) and CPU seconds of
    one of our methods."""
    mdl = IvimModel(ph["bvals"], "one-step", "osipi", dstar_convention="osipi", **kwargs)
    t0 = time.process_time()
    fit = mdl.fit(ph["signal"], ph["mask"])
    seconds = time.process_time() - t0
    names = ("D", "Fivim", "Dstar")
    ci = None
    if "Fivim_ci_low" in fit.maps:
        ci = np.stack([np.stack([fit.maps[f"{n}_ci_{side}"] for n in names], axis=-1) for side in ("low", "high")])
    return np.stack([fit.maps[n] for n in names], axis=-1), seconds, ci


def ivim_mri(ph, spatial, python, seed):
    """Maps (D, f, D*ₚ) and CPU seconds of ivim-mri's bayes (in its environment)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, signal=ph["signal"], mask=ph["mask"], bvals=ph["bvals"], spatial=spatial, seed=seed)
        done = subprocess.run([python, os.path.join(HERE, "ivim_mri_anchor.py"), src, dst],
                              capture_output=True, text=True)      # its overflow warnings: not ours
        if done.returncode:
            raise RuntimeError(f"ivim-mri failed: {done.stderr.strip()}")
        out = np.load(dst, allow_pickle=False)
        return np.stack([out["D"], out["f"], out["Dstar_p"]], axis=-1), float(out["cpu_s"]), None


def scores(ph, est, ci):
    """Median |rel err| (D, f, D*ₚ) inside and at edges, f's rank correlation in tissue 1, and
    the coverage (D, f, D*ₚ) of the 95 % intervals inside (None without intervals)."""
    rel = np.abs(est - ph["truth"]) / ph["truth"]
    inside, edge = ph["mask"] & ~ph["edge"], ph["edge"]
    main = inside & (ph["tissue"] == 1)
    rho = spearmanr(est[..., 1][main], ph["truth"][..., 1][main]).correlation
    cov = None if ci is None else ((ci[0] <= ph["truth"]) & (ph["truth"] <= ci[1]))[inside].mean(axis=0)
    return np.nanmedian(rel[inside], axis=0), np.nanmedian(rel[edge], axis=0), rho, cov


def row(case, snr, label, ph, run, base_seconds):
    est, seconds, ci = run
    inside, edge, rho, cov = scores(ph, est, ci)
    cells = [" / ".join(f"{x:.3f}" for x in v[[1, 0, 2]]) for v in (inside, edge)]
    cells.append("" if cov is None else " / ".join(f"{x:.2f}" for x in cov[[1, 0, 2]]))
    print(f"| {case} | {snr:g} | {label} | {cells[0]} | {cells[1]} | {rho:.2f} | {cells[2]} | {seconds:.2f} | "
          f"{seconds / base_seconds:.1f} |", flush=True)
    return inside, rho


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snr", type=float, nargs="+", default=[10, 20, 30, 50])
    parser.add_argument("--cases", nargs="+", choices=("brain", "abdomen"), default=["brain", "abdomen"])
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--anchor-python", default="/tmp/ivimmri/bin/python")
    parser.add_argument("--no-anchor", action="store_true")
    args = parser.parse_args(argv)
    anchor = not args.no_anchor and os.path.exists(args.anchor_python)
    warm = phantom("brain", 30, 0, shape=(8, 8, 1))
    for kwargs in METHODS.values():
        ours(warm, kwargs)                  # compiled or loaded, not timed
    print(f"seed {args.seed}; median |relative error| f / D / D*p inside tissues and at edges; rho: Spearman "
          "of f in the largest tissue; coverage of the truth by the 95 % intervals inside tissues; CPU s in one "
          "process, and x the voxel-wise posterior's (log)\n")
    print("| case | SNR | method | inside f / D / D*p | edges f / D / D*p | rho f | coverage f / D / D*p | CPU s "
          "| x voxel-wise |")
    print("|---|---|---|---|---|---|---|---|---|")
    targets = []
    for case in args.cases:
        for snr in args.snr:
            ph = phantom(case, snr, args.seed + int(snr))
            runs = {label: ours(ph, kwargs) for label, kwargs in METHODS.items()}
            base = runs["bayes log = auto here (voxel-wise)"][1]
            res = {label: row(case, snr, label, ph, run, base) for label, run in runs.items()}
            if case == "brain" and snr == 30:
                (vw, _), (sp, rho) = res["bayes log = auto here (voxel-wise)"], res["**bayes spatial**"]
                targets.append((sp[1] / vw[1], sp[2] / vw[2], sp[0] / vw[0], rho,
                                runs["**bayes spatial**"][1] / base))
            if not anchor:
                continue
            small = phantom(case, snr, args.seed + int(snr), shape=(32, 32, 1))
            small_runs = {f"{label}, 32x32x1": ours(small, METHODS[label]) for label in ANCHOR_METHODS}
            for spatial in (False, True):
                small_runs[f"ivim-mri bayes{' spatial_prior' if spatial else ''}, 32x32x1"] = ivim_mri(
                    small, spatial, args.anchor_python, args.seed)
            small_base = small_runs[f"{ANCHOR_METHODS[0]}, 32x32x1"][1]
            for label, run in small_runs.items():
                row(case, snr, label, small, run, small_base)
    if not anchor:
        print("\nivim-mri: skipped (--no-anchor, or no", args.anchor_python, ")")
    for f_ratio, p_ratio, d_ratio, rho, t_ratio in targets:
        print(f"\nbrain, SNR 30, spatial / voxel-wise: f {f_ratio:.2f} (target <= 0.6), D*p {p_ratio:.2f} (<= 0.8), "
              f"D {d_ratio:.2f} (<= 1), rho f {rho:.2f} (>= 0.3), time {t_ratio:.1f}x (<= 10)")


if __name__ == "__main__":
    main()
