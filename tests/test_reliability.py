"""Faults and hostile inputs, tried as a batch user meets them: signals, dying workers, odd and
huge images, concurrent runs into one folder, batch defaults.  The "Reliability" table of
docs/reliability.md names these tests; test_reliability_table_names_existing_tests keeps the two together."""
import concurrent.futures
import glob
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

import ivim_fitting
import ivim_view_fits
from conftest import AFFINE, BVALS, REPO, run_script, true_params, write_dataset
from ivim_common import io, model, resources, simu_cli, voxelpool
from ivim_common.progress import Progress
from ivim_common.constants import CORE_MAPS
from ivim_common.engines import fast
from ivim_common.errors import OutputExistsError, WorkerDiedError
from test_fitting_cli import base_args, call_main

SNR_SCRIPT = "ivim_simu_compute_required_snr.py"


# --------------------------------------------------------------------------- helpers

def _parents():
    """{pid: parent pid} of every process, from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def descendants(pid):
    """Process ids of the children, grandchildren, ... of ``pid`` (as pgrep -P, recursively)."""
    parents, found, todo = _parents(), [], [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        todo += children
    return found


def alive(pids):
    """Those of ``pids`` that still run (not gone, not a zombie)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(pid)
        except OSError:
            pass
    return out


def start(script, *args, **kwargs):
    return subprocess.Popen([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def wait_for_workers(process, n_workers, timeout=120):
    """Wait until ``process`` runs ``n_workers`` pool workers, started (their initialiser has
    set SIGTERM to be ignored); returns all its descendants."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = [p for p in descendants(process.pid) if "spawn_main" in _cmdline(p) and _ignores_sigterm(p)]
        if len(workers) >= n_workers:
            return descendants(process.pid)
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    raise AssertionError("the workers did not start")


def _ignores_sigterm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(line for line in f if line.startswith("SigIgn:")).split()[1]
    except (OSError, StopIteration):
        return False
    return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except OSError:
        return ""


def finish(process, pids):
    """Wait for the command to end; 1 s later none of ``pids`` may run.  Returns stderr."""
    _, err = process.communicate(timeout=120)
    time.sleep(1)
    assert alive(pids) == [], f"survivors: {[_cmdline(p) for p in alive(pids)]}"
    return err


@pytest.fixture(scope="module")
def long_fit(tmp_path_factory):
    """A 20 x 20 x 1 DWI with no mask: 400 voxels, minutes with lmfit, so a signal comes mid-run."""
    folder = tmp_path_factory.mktemp("long")
    signal_ = model.ivim_signal(BVALS, *np.moveaxis(true_params(400).reshape(20, 20, 1, 4), -1, 0))
    nib.save(nib.Nifti1Image(signal_.astype(np.float32), AFFINE), folder / "dwi.nii.gz")
    (folder / "bval.txt").write_text(" ".join(f"{b:g}" for b in BVALS))
    return ["-i", folder / "dwi.nii.gz", "-b", folder / "bval.txt", "--engine", "lmfit", "--chunk-size", 1]


LONG_SIMULATION = ["-model", "one-step", "-F", "0.01:30:0.30", "-Dstar", "3e-3:30:35e-3", "-D", "0.3e-3,1.5e-3",
                   "--n-draws", 2000]


# --------------------------------------------------------------------------- signals

@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_during_parallel_fit_stops_every_process(signum, long_fit, tmp_path):
    process = start("ivim_fitting.py", *long_fit, "-o", tmp_path / "out", "-j", 2)
    pids = wait_for_workers(process, 2)
    process.send_signal(signum)
    err = finish(process, pids)
    assert process.returncode == 128 + signum, err
    how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    assert err.strip().splitlines()[-1] == f"ivim_fitting.py: {how}, no output written"
    assert "leaked semaphore" not in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []          # no output folder, no staging folder, no lock


@pytest.mark.slow
def test_sigterm_to_the_process_group_as_timeout_sends_it(long_fit, tmp_path):
    process = start("ivim_fitting.py", *long_fit, "-o", tmp_path / "out", "-j", 2, start_new_session=True)
    pids = wait_for_workers(process, 2)
    os.killpg(process.pid, signal.SIGTERM)     # workers get it too: they leave it to the parent
    err = finish(process, pids)
    assert process.returncode == 143, err
    assert "stopped by SIGTERM" in err and "worker" not in err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_parent_killed_with_sigkill_takes_its_workers_along(long_fit, tmp_path):
    """No clean-up is possible then; the workers must still not stay behind (Linux: PDEATHSIG)."""
    process = start("ivim_fitting.py", *long_fit, "-o", tmp_path / "out", "-j", 2)
    pids = wait_for_workers(process, 2)
    process.kill()
    finish(process, pids)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_sigterm_twice_during_clean_up(long_fit, tmp_path):
    process = start("ivim_fitting.py", *long_fit, "-o", tmp_path / "out", "-j", 2)
    pids = wait_for_workers(process, 2)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    process.send_signal(signal.SIGTERM)       # during the clean-up (a no-op if it has ended)
    err = finish(process, pids)
    assert process.returncode == 143, err
    assert len(err.strip().splitlines()) == 1 and os.listdir(tmp_path) == []


@pytest.mark.slow
def test_sigterm_single_process_fit(long_fit, tmp_path):
    process = start("ivim_fitting.py", *long_fit, "-o", tmp_path / "out", "-j", 1, "-v", 2)
    process.stderr.readline()                  # printed just before the fit starts
    time.sleep(1)
    process.send_signal(signal.SIGTERM)
    err = finish(process, [])
    assert process.returncode == 143, err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("script, extra", [(SNR_SCRIPT, []),
                                           ("ivim_simu_compute_error_noise.py", ["-snr", 50])])
def test_sigterm_during_simulation_stops_every_process(script, extra, tmp_path):
    process = start(script, *LONG_SIMULATION, *extra, "-ofolder", tmp_path / "out", "-j", 2)
    pids = wait_for_workers(process, 2)
    process.send_signal(signal.SIGTERM)
    err = finish(process, pids)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == f"{script}: stopped by SIGTERM, no output written"
    assert "leaked semaphore" not in err
    assert os.listdir(tmp_path) == []


def test_sigterm_in_the_viewer_writes_nothing(tmp_path, monkeypatch, capsys):
    data = write_dataset(tmp_path / "data", mask_voxels=1)
    assert ivim_fitting.main([str(a) for a in base_args(data, tmp_path / "maps")] + ["-v", "0"]) == 0
    from ivim_common import viewer

    monkeypatch.setattr(viewer, "montage_figure", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    code = ivim_view_fits.main(["-i", str(tmp_path / "maps" / "Fivim_map.nii.gz"), "--montage",
                                str(tmp_path / "page.png")])
    assert code == 143
    assert capsys.readouterr().err.strip() == "ivim_view_fits.py: stopped by SIGTERM, no output written"
    assert sorted(os.listdir(tmp_path)) == ["data", "maps"]


def test_sighup_in_simulation_plot_writes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sim"
    assert simu_cli.run_compute("error_nonoise", _nonoise_parser(),
                                ["-model", "one-step", "-F", "0.1,0.2", "-Dstar", "0.02", "-D", "1e-3",
                                 "-ofolder", out, "-j", 1, "-v", 0]) == 0
    from ivim_common import plotting

    monkeypatch.setattr(plotting, "simulation_figures", lambda *a, **k: os.kill(os.getpid(), signal.SIGHUP))
    code = simu_cli.run_plot(_plot_parser(), ["-input", *glob.glob(str(out / "*.npz")), "-oname", out / "fig"])
    assert code == 129
    assert "stopped by SIGHUP, no output written" in capsys.readouterr().err
    assert len(os.listdir(out)) == 2


def _nonoise_parser():
    import ivim_simu_compute_error_nonoise

    return ivim_simu_compute_error_nonoise.get_parser()


def _plot_parser():
    import ivim_simu_plot

    return ivim_simu_plot.get_parser()


# --------------------------------------------------------------------------- dying workers

@pytest.mark.slow
@pytest.mark.parametrize("verbose", [1, 2])
def test_worker_killed_during_fit_is_one_line(verbose, long_fit, tmp_path):
    process = start("ivim_fitting.py", *long_fit, "-o", tmp_path / "out", "-j", 2, "-v", verbose)
    pids = wait_for_workers(process, 2)
    worker = next(p for p in pids if "spawn_main" in _cmdline(p))
    os.kill(worker, signal.SIGKILL)
    err = finish(process, pids)
    assert process.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ivim_fitting.py: error: a worker process was killed by SIGKILL")
    assert "-j" in last and "--chunk-size" in last and "nothing was written" in last
    assert ("Traceback" in err) == (verbose == 2)
    if verbose == 1:
        assert len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_worker_killed_during_simulation_is_one_line(tmp_path):
    process = start(SNR_SCRIPT, *LONG_SIMULATION, "-ofolder", tmp_path / "out", "-j", 2)
    pids = wait_for_workers(process, 2)
    os.kill(next(p for p in pids if "spawn_main" in _cmdline(p)), signal.SIGKILL)
    err = finish(process, pids)
    assert process.returncode == 1, err
    assert err.strip().splitlines() == [f"{SNR_SCRIPT}: error: a worker process was killed by SIGKILL, e.g. by "
                                        "the out-of-memory killer; the run stopped and nothing was written; "
                                        "try fewer workers (-j)"]
    assert os.listdir(tmp_path) == []


def _segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


def _exit_3():
    os._exit(3)


def _out_of_memory():
    raise MemoryError


@pytest.mark.slow
@pytest.mark.parametrize("func, expected", [(_segfault, "killed by SIGSEGV, a crash"),
                                            (_exit_3, "died (exit code 3)"),
                                            (_out_of_memory, "ran out of memory")])
def test_worker_crash_exit_or_memory_error_is_one_error(func, expected):
    with pytest.raises(WorkerDiedError, match=re.escape(expected)):
        with voxelpool.WorkerPool(2) as pool:
            pool.run([(i, func, (), {}) for i in range(2)], lambda key, result: None)


# --------------------------------------------------------------------------- images

def _nii(path, data, affine=AFFINE, slope=None):
    image = nib.Nifti1Image(data, affine, dtype=data.dtype)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    nib.save(image, path)
    return path


def _header_claims(path, shape):
    """A small float32 .nii whose header claims ``shape`` (4-D)."""
    _nii(path, np.ones((2, 2, 1, BVALS.size), np.float32))
    raw = bytearray(open(path, "rb").read())
    raw[40:56] = struct.pack("<8h", 4, *shape, 1, 1, 1)
    open(path, "wb").write(raw)
    return path


def _datatype_code(path, code, bitpix):
    raw = bytearray(open(path, "rb").read())
    raw[70:74] = struct.pack("<2h", code, bitpix)
    open(path, "wb").write(raw)
    return path


def _truncated(path, keep):
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:keep])
    return path


def _dwi(d):
    return nib.load(d["dwi"]).get_fdata()


def _mask(d):
    return nib.load(d["mask"]).get_fdata()


RGB = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
BAD_IMAGES = {
    # name: (flag, make(data set, tmp) -> path, text expected in the one-line message)
    "complex DWI": ("-i", lambda d, t: _nii(t / "c.nii.gz", _dwi(d).astype(np.complex64)),
                    "complex data type complex64 is not supported"),
    "RGB DWI": ("-i", lambda d, t: _nii(t / "rgb.nii", np.zeros((3, 3, 1, 11), RGB)), "RGB data type"),
    "binary (1-bit) DWI": ("-i", lambda d, t: _datatype_code(_nii(t / "u8.nii", np.ones((3, 3, 1, 11), np.uint8)),
                                                             1, 1), "not a readable NIfTI image (data code 1"),
    "complex mask": ("-ma", lambda d, t: _nii(t / "cm.nii.gz", _mask(d).astype(np.complex128)),
                     "complex data type complex128 is not supported"),
    "header claims 30000^3 x 11": ("-i", lambda d, t: _header_claims(t / "huge.nii", (30000, 30000, 30000, 11)),
                                   "PiB of memory"),
    "truncated .nii": ("-i", lambda d, t: _truncated(_nii(t / "tr.nii", _dwi(d).astype(np.float32)), 400),
                       "cannot read the image data"),
    "truncated .nii.gz": ("-i", lambda d, t: _truncated(_nii(t / "tr.nii.gz", _dwi(d).astype(np.float32)), 200),
                          "tr.nii.gz: "),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_image_one_line_no_output(case, dataset, tmp_path, capsys):
    flag, make, expected = BAD_IMAGES[case]
    args = base_args(dataset, tmp_path / "out")
    args[args.index(flag) + 1] = make(dataset, tmp_path)
    before = set(os.listdir(tmp_path))
    code, err = call_main(args, capsys)
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err and "Traceback" not in err
    assert set(os.listdir(tmp_path)) == before


def test_image_larger_than_the_memory_left_is_refused(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 1000)
    code, err = call_main(base_args(dataset, tmp_path / "out"), capsys)
    assert code == 1
    assert err.strip() == (f"ivim_fitting.py: error: DWI {dataset['dwi']}: image of shape (3, 3, 1, 11) needs "
                           "about 1.93 KiB of memory, 0.977 KiB available: crop it to the region to fit (e.g. "
                           "fslroi), or run with more memory (e.g. sbatch --mem)")


@pytest.mark.parametrize("dtype, slope", [(np.int16, 0.25), (np.uint8, 4.0), (np.int32, 1e-3)])
def test_integer_dwi_with_scaling_fits_as_float(dtype, slope, dataset, tmp_path, capsys):
    data = np.nan_to_num(_dwi(dataset))
    stored = np.round(data / (slope or 1)).astype(dtype)
    _nii(dataset["dwi"], stored, slope=slope)
    code, err = call_main(base_args(dataset, tmp_path / "out") + ["-v", "0"], capsys)
    assert code == 0, err
    inputs = io.load_fit_inputs(dataset["dwi"], dataset["bval"], dataset["mask"])
    np.testing.assert_allclose(inputs.data[inputs.selected], stored[inputs.selected].astype(float) * (slope or 1))


@pytest.mark.parametrize("make, expected", [
    (lambda m: m.astype(np.complex64), "complex data type"),
    (lambda m: None, "needs about"),
])
def test_viewer_refuses_complex_or_huge_maps(make, expected, tmp_path, capsys):
    data = write_dataset(tmp_path / "data", mask_voxels=1)
    assert ivim_fitting.main([str(a) for a in base_args(data, tmp_path / "maps")] + ["-v", "0"]) == 0
    path = tmp_path / "maps" / "Fivim_map.nii.gz"
    values = nib.load(path).get_fdata()
    bad = make(values)
    if bad is None:
        path = _header_claims(tmp_path / "maps" / "huge.nii", (30000, 30000, 30000, 1))
    else:
        _nii(path, bad)
    code = ivim_view_fits.main(["-i", str(path), "--montage", str(tmp_path / "page.png")])
    err = capsys.readouterr().err
    assert code == 1 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "page.png")


def test_simulation_result_with_complex_arrays_is_refused(tmp_path, capsys):
    out = tmp_path / "sim"
    assert simu_cli.run_compute("error_nonoise", _nonoise_parser(),
                                ["-model", "one-step", "-F", "0.1,0.2", "-Dstar", "0.02", "-D", "1e-3",
                                 "-ofolder", out, "-j", 1, "-v", 0]) == 0
    path = glob.glob(str(out / "*.npz"))[0]
    with np.load(path) as f:
        arrays = dict(f)
    arrays["mean_abs_err"] = arrays["mean_abs_err"].astype(complex)
    np.savez(tmp_path / "bad.npz", **arrays)
    code = simu_cli.run_plot(_plot_parser(), ["-input", tmp_path / "bad.npz", "-oname", tmp_path / "fig"])
    assert code == 1 and "not real numbers" in capsys.readouterr().err


# --------------------------------------------------------------------------- one output folder, several runs

@pytest.mark.slow
def test_two_fits_into_one_folder_at_once_one_writes_one_refuses(dataset, tmp_path):
    out = tmp_path / "out"
    common = ["-i", dataset["dwi"], "-b", dataset["bval"], "-ma", dataset["mask"], "-o", out, "--engine", "lmfit",
              "-j", 1, "-v", 0]
    first = start("ivim_fitting.py", *common, "--seed", 1)
    time.sleep(1.5)                          # the first holds the lock and is fitting
    second = run_script("ivim_fitting.py", *common, "--seed", 2)
    first.communicate(timeout=120)
    assert first.returncode == 0
    assert second.returncode == 1
    assert "another run (" in second.stderr and "is writing into it" in second.stderr
    with open(out / "ivim_fitting.json") as f:
        assert json.load(f)["seed"] == 1          # all of one run, none of the other
    n_maps = len(CORE_MAPS) + len(model.PARAM_NAMES)     # the least-squares maps and their SD
    assert sorted(os.listdir(tmp_path)) == ["data", "out"] and len(os.listdir(out)) == n_maps + 1


def test_lock_of_a_killed_run_is_taken_over(dataset, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".out.ivim-lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    code, err = call_main(base_args(dataset, tmp_path / "out") + ["-v", "0"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["data", "out"]


def test_lock_of_a_run_on_another_host_is_refused_with_what_to_do(dataset, tmp_path, capsys):
    lock = tmp_path / ".out.ivim-lock"
    lock.write_text("4242 node-17\n")
    code, err = call_main(base_args(dataset, tmp_path / "out"), capsys)
    assert code == 1
    assert err.strip() == (f"ivim_fitting.py: error: output folder {tmp_path / 'out'}: another run (4242 node-17) "
                           f"is writing into it; wait for it to end, or remove {lock} if that run is no longer "
                           "running")


def test_output_folder_made_meanwhile_gets_the_files(tmp_path):
    """A shard's new folder created by another shard while this one ran: 'Directory not empty' before."""
    out = tmp_path / "out"
    paths = [str(out / "a_shard1of2.npz"), str(out / "a_shard1of2.json")]
    with io.staged_outputs(paths, force=False) as tmp:
        for path in paths:
            open(tmp[path], "w").write("1")
        out.mkdir()
        (out / "a_shard2of2.npz").write_text("2")    # the other shard's file, already in place
    assert sorted(os.listdir(out)) == ["a_shard1of2.json", "a_shard1of2.npz", "a_shard2of2.npz"]
    assert os.listdir(tmp_path) == ["out"]


def test_file_written_meanwhile_is_not_replaced_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    paths = [str(out / "r.npz"), str(out / "r.json")]
    with pytest.raises(OutputExistsError, match="r.npz: written meanwhile by another run"):
        with io.staged_outputs(paths, force=False) as tmp:
            for path in paths:
                open(tmp[path], "w").write("mine")
            (out / "r.npz").write_text("theirs")
    assert os.listdir(out) == ["r.npz"] and (out / "r.npz").read_text() == "theirs"


@pytest.mark.slow
def test_shards_started_together_into_one_new_folder_all_succeed(tmp_path):
    out = tmp_path / "shards"
    grid = ["-model", "one-step", "-F", "0.05:4:0.2", "-Dstar", "0.02,0.03", "-D", "1e-3", "-j", 1, "-v", 0,
            "--run-id", 7]
    processes = [start("ivim_simu_compute_error_nonoise.py", *grid, "-ofolder", out, "--shard", f"{k}/4")
                 for k in range(1, 5)]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    assert len(glob.glob(str(out / "sim_results_*_run7_shard*of4.npz"))) == 4
    assert len(os.listdir(out)) == 8 and os.listdir(tmp_path) == ["shards"]


def _shards(out, run_id):
    parser = _nonoise_parser()
    for k in (1, 2):
        args = ["-model", "one-step", "-F", "0.1,0.2", "-Dstar", "0.02", "-D", "1e-3", "-ofolder", out, "-j", 1,
                "-v", 0, "--shard", f"{k}/2"] + (["--run-id", run_id] if run_id else [])
        assert simu_cli.run_compute("error_nonoise", parser, args) == 0


def test_rerun_into_the_same_folder_merge_names_the_runs(tmp_path, capsys):
    out = tmp_path / "sim"
    _shards(out, "11")
    _shards(out, "22")
    code = simu_cli.run_plot(_plot_parser(), ["-input", *sorted(glob.glob(str(out / "*_shard*of2.npz"))),
                                              "--merged", tmp_path / "m.npz"])
    err = capsys.readouterr().err
    assert code == 1 and "several runs (run ids 11, 22)" in err
    assert f"-input {out}/sim_results_*_run22_shard*of2.npz" in err
    one_run = sorted(glob.glob(str(out / "sim_results_*_run22_shard*of2.npz")))
    assert simu_cli.run_plot(_plot_parser(), ["-input", *one_run, "--merged", tmp_path / "m.npz", "-v", 0]) == 0


def test_rerun_without_run_ids_merge_says_what_to_do(tmp_path, capsys):
    out = tmp_path / "sim"
    _shards(out, "")
    time.sleep(1.1)                       # the date stamp in the names differs
    _shards(out, "")
    code = simu_cli.run_plot(_plot_parser(), ["-input", *sorted(glob.glob(str(out / "*.npz"))), "--merged",
                                              tmp_path / "m.npz"])
    err = capsys.readouterr().err
    assert code == 1 and "given twice" in err and "give each run a --run-id" in err


def test_run_id_defaults_to_the_slurm_array_job_id(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "123456")
    monkeypatch.setenv("SLURM_JOB_ID", "123460")
    assert _nonoise_parser().parse_args(["-model", "one-step", "-ofolder", "x"]).run_id == "123456"
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    assert _nonoise_parser().parse_args(["-model", "one-step", "-ofolder", "x"]).run_id == "123460"


# --------------------------------------------------------------------------- batch defaults

def test_default_jobs_are_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    monkeypatch.setattr(resources, "cgroup_cpu_limit", lambda: None)
    assert voxelpool.default_jobs() == 3
    monkeypatch.setattr(resources, "cgroup_cpu_limit", lambda: 2)
    assert voxelpool.default_jobs() == 2


@pytest.mark.slow
def test_taskset_one_cpu_gives_one_job_in_the_sidecar(dataset, tmp_path):
    result = subprocess.run(["taskset", "-c", "0", sys.executable, os.path.join(REPO, "ivim_fitting.py"),
                             *map(str, base_args(dataset, tmp_path / "out")[:-2]), "-v", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out" / "ivim_fitting.json") as f:
        assert json.load(f)["jobs"] == 1


def _cgroup(tmp_path, proc_line, files):
    (tmp_path / "proc").write_text(proc_line + "\n")
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return dict(proc_cgroup=str(tmp_path / "proc"), root=str(tmp_path / "cg"))


@pytest.mark.parametrize("proc_line, files, expected", [
    ("0::/job/step", {"cg/job/cpu.max": "max 100000", "cg/job/step/cpu.max": "150000 100000"}, 2),
    ("0::/job/step", {"cg/job/cpu.max": "300000 100000", "cg/job/step/cpu.max": "max 100000"}, 3),
    ("0::/", {"cg/cpu.max": "max 100000"}, None),
    ("4:cpu,cpuacct:/slurm/job", {"cg/cpu,cpuacct/slurm/job/cpu.cfs_quota_us": "400000",
                                  "cg/cpu,cpuacct/slurm/job/cpu.cfs_period_us": "100000"}, 4),
    ("4:cpu,cpuacct:/slurm/job", {"cg/cpu,cpuacct/slurm/job/cpu.cfs_quota_us": "-1",
                                  "cg/cpu,cpuacct/slurm/job/cpu.cfs_period_us": "100000"}, None),
])
def test_cgroup_cpu_quota_v1_and_v2(tmp_path, proc_line, files, expected):
    assert resources.cgroup_cpu_limit(**_cgroup(tmp_path, proc_line, files)) == expected


def test_available_memory_is_capped_by_the_cgroup_limit(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal: 1000000 kB\nMemAvailable: 800000 kB\n")
    where = _cgroup(tmp_path, "0::/job", {"cg/job/memory.max": str(300 << 20),
                                          "cg/job/memory.current": str(100 << 20)})
    assert resources.available_memory(str(tmp_path / "meminfo"), **where) == 200 << 20
    (tmp_path / "cg/job/memory.max").write_text("max")
    assert resources.available_memory(str(tmp_path / "meminfo"), **where) == 800000 * 1024


def test_one_worker_pool_per_simulation_run(tmp_path, monkeypatch):
    started = []

    class Counting(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            started.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Counting)
    monkeypatch.setattr(fast, "CHUNK_SIZE", 500)   # several chunks per SNR step
    args = ["-model", "one-step", "-F", "0.1,0.2", "-Dstar", "0.02,0.03", "-D", "1e-3", "--n-draws", 300,
            "-ofolder", tmp_path / "snr", "-j", 2, "-v", 0]
    import ivim_simu_compute_required_snr

    assert simu_cli.run_compute("required_snr", ivim_simu_compute_required_snr.get_parser(), args) == 0
    with open(glob.glob(str(tmp_path / "snr" / "*.json"))[0]) as f:
        assert json.load(f)["jobs"] == 2
    assert len(started) == 1


@pytest.mark.parametrize("verbose, lines", [(1, True), (0, False)])
def test_batch_log_gets_progress_lines_not_a_bar(verbose, lines, dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Progress, "LOG_INTERVAL_S", 0.0)
    code, err = call_main(base_args(dataset, tmp_path / "out") + ["--chunk-size", 2, "-v", verbose], capsys)
    assert code == 0
    progress = [line for line in err.splitlines() if re.fullmatch(r"[\w.]+: \d+/6 voxels \(\d+ %\) "
                                                                 r"after \d+ s", line)]
    assert bool(progress) == lines and ("\r" not in err), err
    if lines:
        assert progress[-1].split(": ", 1)[1].startswith("6/6 voxels (100 %)")


def test_docs_job_scripts_pass_jobs_from_slurm():
    pages = "".join(open(p, encoding="utf-8").read() for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
    scripts = re.findall(r"```bash\n(#!/bin/bash\n.*?)```", pages, re.S)
    commands = [line for script in scripts for line in script.replace("\\\n", " ").splitlines()
                if line.startswith("ivim_")]
    assert commands
    for command in commands:
        assert '-j "${SLURM_CPUS_PER_TASK:-1}"' in command, command


# --------------------------------------------------------------------------- the docs' table

def test_reliability_table_names_existing_tests():
    with open(os.path.join(REPO, "docs", "reliability.md"), encoding="utf-8") as f:
        section = f.read().split("## Reliability", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    named = [re.findall(r"`(test_\w+)`", row) for row in rows if not set(row) <= set("|- ")]
    assert len(named) >= 40 and all(named), [r for r, n in zip(rows, named) if not n]
    source = "".join(open(p, encoding="utf-8").read() for p in glob.glob(os.path.join(REPO, "tests", "*.py")))
    defined = set(re.findall(r"^def (test_\w+)", source, re.M))
    assert {name for names in named for name in names} <= defined
