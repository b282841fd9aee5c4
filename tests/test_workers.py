"""Worker processes: a clear message where they cannot start because they re-run the main
module, and no workers for a job smaller than what starting them costs."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from ivim_common import IvimModel, model, voxelpool
from ivim_common.engines import fast

GUARD = 'if __name__ == "__main__":'
FIT = """\
import numpy as np
from ivim_common import IvimModel
from ivim_common.model import ivim_signal
b = np.array([0, 10, 20, 50, 100, 200, 400, 600, 800.0])
signal = ivim_signal(b, 1000.0, 1e-3, np.linspace(0.05, 0.2, 40), 20e-3)
"""
CALL = "fit = IvimModel(b).fit(signal, jobs=2, chunk_size=10); print(round(float(np.mean(fit.f)), 4))\n"


def run_python(args, script=None, cwd=None):
    return subprocess.run([sys.executable, *args], input=script, capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_a_script_from_standard_input_is_told_why_workers_cannot_start():
    out = run_python(["-"], FIT + CALL)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and "WorkerStartError" in last, out.stderr
    assert "standard input" in last and GUARD in last and "jobs=1" in last


@pytest.mark.slow
def test_a_fit_at_import_under_spawn_is_told_to_use_the_main_guard(tmp_path):
    script = tmp_path / "fit_at_import.py"
    script.write_text(FIT + CALL)
    out = run_python([str(script)])
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and "WorkerStartError" in last, out.stderr
    assert str(script) in last and GUARD in last and "as it started" in last
    script.write_text(FIT + GUARD + "\n    " + CALL)            # what the message says to do
    out = run_python([str(script)])
    assert out.returncode == 0 and out.stdout.strip() == "0.125", out.stderr


def test_a_small_job_runs_in_this_process_with_the_same_maps(monkeypatch):
    b = np.array([0, 10, 20, 50, 100, 200, 400, 600, 800.0])
    rng = np.random.default_rng(3)
    n = fast.CHUNK_SIZE + 1000                     # two chunks: workers, unless the job is small
    f = rng.uniform(0.05, 0.2, n)
    signal = model.ivim_signal(b, 1000.0, 1e-3, f, 20e-3) + rng.normal(0, 5, (n, b.size))
    assert n <= fast.IN_PROCESS_VOXELS

    def no_workers(*args, **kwargs):
        raise AssertionError("workers started for a small job")

    with monkeypatch.context() as patch:
        patch.setattr(voxelpool.WorkerPool, "run", no_workers)
        here = IvimModel(b).fit_voxels(signal, jobs=2)
    monkeypatch.setattr(fast, "IN_PROCESS_VOXELS", 0)
    started = []
    run = voxelpool.WorkerPool.run
    monkeypatch.setattr(voxelpool.WorkerPool, "run", lambda pool, *a: started.append(pool.jobs) or run(pool, *a))
    workers = IvimModel(b).fit_voxels(signal, jobs=2)
    assert started == [2] and here.keys() == workers.keys()
    for name in here:
        np.testing.assert_array_equal(here[name], workers[name], err_msg=name)
    assert np.nanmedian(np.abs(here["Fivim"] - f)) < 0.02
