"""A small job as a whole process: ``ivim_fitting.py`` on a 200-voxel image, wall time with
``-j 1`` (the work in the process) and ``-j 2`` (the default on a 2-CPU machine), best of
--repeats runs, alternated so that both see the same load.

    python bench/bench_small_job.py [--voxels 200 6000 ...] [--repeats 5]

Prints, for each image size, each setting's best wall time and its ratio to ``-j 1``.
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


def write_data(folder, n_voxels, seed=0):
    """A (n_voxels, 1, 1, n_b) DWI with noise, and its b-values; returns their paths."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.05, 0.2, n_voxels)
    signal = ivim_signal(BVALS, 1000.0, 1e-3, f, 20e-3) + rng.normal(0, 10, (n_voxels, BVALS.size))
    dwi, bval = os.path.join(folder, "dwi.nii.gz"), os.path.join(folder, "bvals.txt")
    nib.save(nib.Nifti1Image(signal.reshape(n_voxels, 1, 1, -1).astype(np.float32), np.eye(4)), dwi)
    np.savetxt(bval, BVALS[None], fmt="%g")
    return dwi, bval


def run(dwi, bval, out, jobs):
    start = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "ivim_fitting.py"), "-i", dwi, "-b", bval, "-o", out,
                    "-j", str(jobs), "--force", "-v", "0"], check=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, nargs="+", default=[200])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for n_voxels in args.voxels:
        with tempfile.TemporaryDirectory() as folder:
            dwi, bval = write_data(folder, n_voxels)
            out = os.path.join(folder, "maps")
            run(dwi, bval, out, 1)                      # compile or load the cache once
            times = {1: [], 2: []}
            for _ in range(args.repeats):
                for jobs in times:
                    times[jobs].append(run(dwi, bval, out, jobs))
        base = min(times[1])
        print(f"{n_voxels} voxels, best of {args.repeats}, load average {os.getloadavg()[0]:.2f}")
        for jobs, values in times.items():
            print(f"  -j {jobs}: {min(values):.3f} s wall (median {np.median(values):.3f} s), "
                  f"{min(values) / base:.2f} x -j 1", flush=True)


if __name__ == "__main__":
    main()
