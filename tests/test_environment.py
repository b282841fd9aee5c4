"""The BLAS thread variables: set by the scripts and for the worker processes, never by an import."""
import os
import subprocess
import sys

import numpy as np
import pytest

from ivim_common import voxelpool
from ivim_common.resources import BLAS_THREAD_VARIABLES

# Not from conftest, which sets the variables: the worker processes import this module.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPTS = ("ivim_fitting.py", "ivim_view_fits.py", "ivim_simu_plot.py")


def _environment_without_blas_variables():
    return {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_VARIABLES}


def test_importing_the_package_leaves_the_environment_alone():
    code = ("import os; before = dict(os.environ)\n"
            "from ivim_common import IvimModel, api, engines, io, simulation, viewer, voxelpool\n"
            "from ivim_common.engines import fast, lmfit_reference\n"
            "assert dict(os.environ) == before, set(os.environ) - set(before)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env=_environment_without_blas_variables(), timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("entry", [f"script:{s}" for s in SCRIPTS] + ["command:ivim_fitting"])
def test_scripts_run_with_one_blas_thread(entry):
    """Run as a script (``__main__``) or as an installed command: one BLAS thread unless the user set one."""
    kind, name = entry.split(":")
    run = (f"runpy.run_path({name!r}, run_name='__main__')" if kind == "script"
           else f"import ivim_common.commands; ivim_common.commands.{name}()")
    code = ("import os, runpy, sys\nsys.argv = ['/launcher/bin/prog', '--version']\n"
            f"try:\n    {run}\nexcept SystemExit:\n    pass\n"
            "print([os.environ.get(v) for v in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS')])")
    env = dict(_environment_without_blas_variables(), MKL_NUM_THREADS="3", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "['1', '1', '3']"


def _report_blas_threads(signal, voxel_ids):
    """Run in a worker: every output is the worker's OPENBLAS_NUM_THREADS."""
    return {"threads": np.full(len(signal), float(os.environ.get("OPENBLAS_NUM_THREADS", 0)))}


def test_workers_get_one_blas_thread_and_this_process_keeps_its_environment(monkeypatch):
    for var in BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    out = voxelpool.map_chunks(_report_blas_threads, np.ones((4, 2)), np.arange(4), jobs=2, chunk_size=1,
                               progress=False)
    assert np.array_equal(out["threads"], np.ones(4))
    assert not any(var in os.environ for var in BLAS_THREAD_VARIABLES)
