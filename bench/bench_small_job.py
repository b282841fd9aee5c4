"""Small jobs as whole processes: ``ivim_fitting.py`` on synthetic images of a few hundred to
some ten thousand voxels, wall time with ``-j 1`` (the work in the process) and ``-j 2``
(workers, unless the job is small), best of --repeats runs, every setting alternated so that
all see the same load.  ``--roots`` compares checkouts of the toolbox in the same run (e.g. a
``git archive`` of the base commit and this tree): the first is the baseline.

    python bench/bench_small_job.py [--voxels 200 20000] [--repeats 5] [--roots BASE .]

Prints one row per image size and checkout: the best (and median) wall time of each setting,
and its ratio to the baseline's with the same -j.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ivim_common.model import ivim_signal  # noqa: E402

BVALS = np.array([0, 10, 20, 50, 100, 200, 400, 600, 800], dtype=float)
JOBS = (1, 2)


def write_data(folder, n_voxels, seed=0):
    """A DWI of n_voxels noisy voxels, and its b-values; returns their paths."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.05, 0.2, n_voxels)
    signal = ivim_signal(BVALS, 1000.0, 1e-3, f, 20e-3) + rng.normal(0, 10, (n_voxels, BVALS.size))
    dwi, bval = os.path.join(folder, "dwi.nii.gz"), os.path.join(folder, "bvals.txt")
    grid = (n_voxels // 100, 100, 1) if n_voxels % 100 == 0 else (n_voxels, 1, 1)
    nib.save(nib.Nifti1Image(signal.reshape(*grid, -1).astype(np.float32), np.eye(4)), dwi)
    np.savetxt(bval, BVALS[None], fmt="%g")
    return dwi, bval


def run(root, dwi, bval, out, jobs):
    start = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(root, "ivim_fitting.py"), "-i", dwi, "-b", bval, "-o", out,
                    "-j", str(jobs), "--force", "-v", "0"], check=True, cwd=root)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, nargs="+", default=[200, 20000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--roots", nargs="+", default=[ROOT], help="checkouts to compare, the baseline first")
    args = parser.parse_args()
    roots = [os.path.abspath(r) for r in args.roots]
    print(f"best of {args.repeats} (median), load average {os.getloadavg()[0]:.2f} at the start")
    print(f"{'voxels':>7} {'tree':<28}" + "".join(f"{f'-j {j} (s)':>22}{'x base':>8}" for j in JOBS))
    for n_voxels in args.voxels:
        with tempfile.TemporaryDirectory() as folder:
            dwi, bval = write_data(folder, n_voxels)
            out = os.path.join(folder, "maps")
            times = {(root, jobs): [] for root in roots for jobs in JOBS}
            for root in roots:
                run(root, dwi, bval, out, 1)                      # compile or load the cache once
            for _ in range(args.repeats):
                for key in times:
                    times[key].append(run(key[0], dwi, bval, out, key[1]))
        for root in roots:
            cells = "".join(f"{min(times[root, j]):>10.3f} ({np.median(times[root, j]):.3f})"
                            f"{min(times[root, j]) / min(times[roots[0], j]):>8.2f}" for j in JOBS)
            print(f"{n_voxels:>7} {os.path.basename(root) or root:<28}{cells}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
