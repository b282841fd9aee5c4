"""Shared test helpers: a tiny synthetic DWI data set written as NIfTI files."""
import os
import subprocess
import sys

import ivim_common.resources

ivim_common.resources.limit_blas_threads()  # as the scripts do, before numpy loads

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ivim_common import model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BVALS = np.array([5, 10, 20, 30, 50, 75, 150, 250, 600, 700, 800], dtype=float)
AFFINE = np.array([[0.78, 0.0, 0.05, -50.0],
                   [0.0, 0.78, 0.0, 30.0],
                   [0.0, 0.1, 5.25, -12.0],
                   [0.0, 0.0, 0.0, 1.0]])
NAN_VOXEL = (1, 1, 0)       # a NaN sample: must fail, the run goes on
NONPOS_VOXEL = (2, 2, 0)    # a zero sample at b = 800: must fail too


def run_script(script, *args, cwd=REPO):
    """Run a top-level script in a fresh interpreter; returns the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def true_params(n_voxels, seed=0):
    """Seeded truths (S0, D, Fivim, Dstar) well inside the bounds of every approach, (n_voxels, 4)."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(400, 800, n_voxels), rng.uniform(0.5e-3, 1.5e-3, n_voxels),
                            rng.uniform(0.05, 0.18, n_voxels), rng.uniform(20e-3, 30e-3, n_voxels)])


def write_dataset(folder, mask_voxels=None):
    """Write dwi.nii.gz (3 x 3 x 1 x 11), bval.txt and mask.nii.gz into ``folder``.

    The mask covers the 6 voxels with x >= 1 (``mask_voxels`` of them if given, in C order);
    x = 0 lies outside.  Within the mask, NAN_VOXEL and NONPOS_VOXEL have bad samples.

    Returns
    -------
    dict with keys dwi, bval, mask (paths) and params (3, 3, 1, 4 truths)
    """
    os.makedirs(folder, exist_ok=True)
    params = true_params(9).reshape(3, 3, 1, 4)
    signal = model.ivim_signal(BVALS, *np.moveaxis(params, -1, 0))
    signal[NAN_VOXEL + (3,)] = np.nan
    signal[NONPOS_VOXEL + (10,)] = 0.0
    mask = np.zeros((3, 3, 1), dtype=np.int8)
    mask[1:] = 1
    if mask_voxels is not None:
        mask.flat[np.flatnonzero(mask)[mask_voxels:]] = 0
    paths = {name: os.path.join(folder, name + ext)
             for name, ext in (("dwi", ".nii.gz"), ("bval", ".txt"), ("mask", ".nii.gz"))}
    nib.save(nib.Nifti1Image(signal.astype(np.float32), AFFINE), paths["dwi"])
    nib.save(nib.Nifti1Image(mask, AFFINE), paths["mask"])
    with open(paths["bval"], "w") as f:
        f.write(" ".join(f"{b:g}" for b in BVALS) + "\n")
    return {**paths, "params": params}


@pytest.fixture
def dataset(tmp_path):
    """The synthetic data set in a fresh temporary folder."""
    return write_dataset(tmp_path / "data")


@pytest.fixture(autouse=True)
def restore_stop_signals():
    """A script's main() stopped by a signal or Ctrl-C leaves SIGINT, SIGTERM and SIGHUP ignored
    (it is exiting: a second signal must change nothing); tests call main() in this process."""
    import signal

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)
