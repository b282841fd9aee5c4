"""Simulation tools: grids, noise, error statistics, required-SNR search, shards, files, figures.

Tiny grids and few draws, so that the whole file runs in seconds with the fast engine.
"""
import argparse
import glob
import json
import os
import time

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from scipy import special

import ivim_simu_compute_error_noise
import ivim_simu_compute_error_nonoise
import ivim_simu_compute_required_snr
import ivim_simu_plot
from ivim_common import cli
from ivim_common import simulation as simu
from ivim_common.errors import InputError

BVALS = "5,10,20,30,50,75,150,250,600,700,800"
GRID = ["-F", "0.1,0.25", "-Dstar", "8e-3,25e-3", "-D", "0.3e-3,1.5e-3", "-bval", BVALS]
ISSUE_NAMES = {
    "error_nonoise": {"mean_abs_err"},
    "error_noise": {"mean_abs_err", "sd_abs_err", "mean_signed_err", "pct_signed_err", "n_failed",
                    "n_noise_draws", "snr", "mean_pred_sd", "emp_sd", "coverage_95", "n_with_sd"},
    "required_snr": {"min_snr", "mean_err_at_min_snr", "n_noise_draws"},
}
COMMON_NAMES = {"kind", "F_range", "Dstar_range", "D_range", "bvals", "err_order"}


def tiny_sim(**kw):
    values = dict(bvals=cli.bval_list(BVALS), F_range=np.array([0.1, 0.25]),
                  Dstar_range=np.array([8e-3, 25e-3]), D_range=np.array([0.3e-3, 1.5e-3]),
                  bounds_version="2019", n_draws=40, seed=3)
    values.update(kw)
    return simu.Simulation(**values)


# ---------------------------------------------------------------------------------------------
# Parsing and grid

def test_flag_types_linspace_list_and_shard():
    np.testing.assert_array_equal(cli.value_list("0.01:10:0.30"), np.linspace(0.01, 0.30, 10))
    np.testing.assert_array_equal(cli.value_list("0.3e-3,1.5e-3"), [0.3e-3, 1.5e-3])
    assert cli.value_list("3.0e-3:10:35e-3").size == 10
    for bad in ("0.1:x:0.3", "a,b", "0.1:3", "", "-0.1,0.2", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.value_list(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="fraction"):
        cli.fraction_list("0.1,1.2")
    with pytest.raises(argparse.ArgumentTypeError, match="4 distinct"):
        cli.bval_list("0,0,400,800")
    assert cli.shard_spec("2/8") == (2, 8)
    for bad in ("0/3", "4/3", "2", "a/b"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.shard_spec(bad)


def test_truth_and_signal_follow_the_flat_cell_order():
    sim = tiny_sim()
    cell = (1 * 2 + 0) * 2 + 1  # iF = 1, iDstar = 0, iD = 1
    np.testing.assert_allclose(sim.truth([cell])[0], [0.25, 8e-3, 1.5e-3, 0.25 * 8e-3])
    expected = 600 * np.exp(-sim.bvals * 1.5e-3) * (0.25 * np.exp(-sim.bvals * 8e-3) + 0.75)
    np.testing.assert_allclose(sim.signal([cell])[0], expected)


def test_shard_cells_partition_the_grid():
    parts = [simu.shard_cells(23, k, 4) for k in range(1, 5)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(23))
    assert {len(p) for p in parts} == {5, 6}


def test_draws_depend_only_on_seed_and_cell():
    sim = tiny_sim(noise="rician")
    both = sim.standard_draws([2, 5])
    np.testing.assert_array_equal(sim.standard_draws([5])[:, 0], both[:, 1])
    assert both.shape == (2, 2, 40, 11)
    # the Gaussian draws are the real part of the Rician ones
    np.testing.assert_array_equal(tiny_sim().standard_draws([5])[0, 0], both[0, 1])
    assert not np.array_equal(tiny_sim(seed=4).standard_draws([5]), sim.standard_draws([5])[:1])


# ---------------------------------------------------------------------------------------------
# Noise

@pytest.mark.parametrize("nu_over_sigma", [0.0, 0.5, 1.5, 4.0])
def test_rician_mean_matches_the_rice_distribution(nu_over_sigma):
    sigma = 10.0
    nu = nu_over_sigma * sigma
    draws = np.random.default_rng(11).standard_normal((2, 400_000))
    sample = simu.add_noise(np.full(400_000, nu), draws, sigma, "rician")
    x = -nu ** 2 / (2 * sigma ** 2)
    # L_1/2(x) = exp(x/2) [(1 - x) I0(-x/2) - x I1(-x/2)], written with scaled Bessel functions
    laguerre_half = (1 - x) * special.i0e(-x / 2) - x * special.i1e(-x / 2)
    expected = sigma * np.sqrt(np.pi / 2) * laguerre_half
    assert abs(sample.mean() - expected) < 4 * sample.std() / np.sqrt(sample.size)
    assert sample.min() >= 0


def test_gaussian_noise_is_additive_with_sd_sigma():
    draws = np.random.default_rng(2).standard_normal((1, 200_000))
    sample = simu.add_noise(np.full(200_000, 50.0), draws, 5.0, "gaussian")
    assert abs(sample.mean() - 50.0) < 0.05
    assert abs(sample.std() - 5.0) < 0.05


# ---------------------------------------------------------------------------------------------
# Errors

def test_error_statistics_leave_failed_fits_out():
    errors = np.array([[[10.0, -20.0, 5.0, 1.0], [-30.0, 20.0, np.nan, 1.0], [20.0, 0.0, -5.0, -3.0]]])
    stats = simu.error_statistics(errors)
    assert stats["n_failed"].tolist() == [1]
    np.testing.assert_allclose(stats["mean_abs_err"][0], [15.0, 10.0, 5.0, 2.0])
    np.testing.assert_allclose(stats["sd_abs_err"][0], [5.0, 10.0, 0.0, 1.0])
    np.testing.assert_allclose(stats["mean_signed_err"][0], [15.0, -10.0, 0.0, -1.0])
    np.testing.assert_allclose(stats["pct_signed_err"][1, 0], [15.0, -10.0, 0.0, -1.0])
    assert stats["pct_signed_err"].shape == (3, 1, 4)


def test_no_noise_errors_are_small_on_easy_cells():
    sim = tiny_sim(D_range=np.array([1.0e-3]))
    arrays = simu.run_errors(sim)
    assert arrays["mean_abs_err"].shape == (4, 2, 2, 1)
    assert np.all(arrays["mean_abs_err"] < 1.0)  # every cell fitted; noise-free, D* well above D: nearly exact


def test_seeded_noise_run_gives_identical_arrays():
    first = simu.run_errors(tiny_sim(noise="rician"), snr=150)
    second = simu.run_errors(tiny_sim(noise="rician"), snr=150)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    other = simu.run_errors(tiny_sim(noise="rician", seed=4), snr=150)
    assert not np.array_equal(first["mean_abs_err"], other["mean_abs_err"])
    assert first["pct_signed_err"].shape == (3, 4, 2, 2, 2)
    assert first["n_failed"].dtype.kind == "i"
    np.testing.assert_array_equal(first["n_failed"], 0)      # SNR 150: every fit succeeds
    # percentiles are ordered
    assert np.all(np.diff(first["pct_signed_err"], axis=0) >= 0)


# ---------------------------------------------------------------------------------------------
# Required SNR

@pytest.mark.parametrize("condition", ["FDstar", "all"])
def test_required_snr_bracket_holds_with_common_random_numbers(condition):
    sim = tiny_sim(D_range=np.array([1.5e-3]))
    cells = np.arange(sim.n_cells)
    res = simu.required_snr(sim, cells, condition, max_error=10.0, snr_start=500.0)
    assert np.all(np.isfinite(res["min_snr"]))
    for i, cell in enumerate(cells):
        hi, lo = res["min_snr"][i], res["bracket_low"][i]
        at_hi = simu.compute_errors(sim, [cell], hi)["mean_abs_err"]
        assert simu.condition_holds(at_hi, condition, 10.0)[0]
        np.testing.assert_allclose(at_hi[0], res["mean_err_at_min_snr"][i])
        assert 0 < lo < hi
        assert hi - lo <= max(simu.BISECT_ABS, simu.BISECT_REL * hi)
        at_lo = simu.compute_errors(sim, [cell], lo)["mean_abs_err"]
        assert not simu.condition_holds(at_lo, condition, 10.0)[0]


def test_chunking_does_not_change_the_results(monkeypatch):
    sim = tiny_sim(n_draws=20)
    whole = simu.run_required_snr(sim, snr_start=400.0)
    noise = simu.run_errors(sim, snr=100)
    monkeypatch.setattr(simu, "CHUNK_VOXELS", 50)  # 2 cells per fit call, 4 calls per step
    for name, value in simu.run_required_snr(sim, snr_start=400.0).items():
        np.testing.assert_array_equal(value, whole[name])
    for name, value in simu.run_errors(sim, snr=100).items():
        np.testing.assert_array_equal(value, noise[name])


def test_worker_processes_do_not_change_the_results():
    # 8 cells x 700 draws = 5600 fits: two chunks of the voxel pool, so two processes really run
    serial = simu.run_errors(tiny_sim(n_draws=700), snr=100)
    parallel = simu.run_errors(tiny_sim(n_draws=700, jobs=2), snr=100)
    for name in serial:
        np.testing.assert_array_equal(parallel[name], serial[name])


def test_required_snr_unreachable_is_nan_at_the_cap():
    sim = tiny_sim(F_range=np.array([0.1]), Dstar_range=np.array([8e-3]), D_range=np.array([1.5e-3]))
    res = simu.required_snr(sim, [0], "all", max_error=1e-9, snr_start=3e4)
    assert np.isnan(res["min_snr"][0]) and np.all(np.isnan(res["mean_err_at_min_snr"][0]))
    assert res["bracket_low"][0] == simu.SNR_CAP
    assert res["n_steps"] == 3  # 3e4, 9e4, then the cap 1e5


def test_required_snr_shards_merge_to_the_unsharded_run():
    sim = tiny_sim(n_draws=20)
    whole = simu.run_required_snr(sim, snr_start=400.0)
    shards = [simu.run_required_snr(sim, snr_start=400.0, shard=(k, 3)) for k in (3, 1, 2)]
    assert np.isnan(shards[0]["min_snr"]).sum() > 0  # a shard leaves other cells empty
    merged = simu.merge_results(shards)
    for name in whole:
        np.testing.assert_array_equal(merged[name], whole[name])
    with pytest.raises(InputError, match="missing"):
        simu.merge_results(shards[:2])
    with pytest.raises(InputError, match="twice"):
        simu.merge_results(shards + shards[:1])
    other = simu.run_required_snr(tiny_sim(n_draws=20, seed=9), snr_start=400.0, shard=(1, 3))
    with pytest.raises(InputError, match="settings"):
        simu.merge_results([shards[0], other, shards[2]])


# ---------------------------------------------------------------------------------------------
# Scripts, files, figures

def run_script(module, args):
    return module.main([str(a) for a in args])


def only_result(folder):
    (path,) = glob.glob(os.path.join(folder, "sim_results_*.npz"))
    return path


def test_scripts_write_npz_json_and_figures_of_each_kind(tmp_path):
    runs = {
        "error_nonoise": (ivim_simu_compute_error_nonoise, []),
        "error_noise": (ivim_simu_compute_error_noise, ["-snr", 120, "--n-draws", 20, "--noise", "rician"]),
        "required_snr": (ivim_simu_compute_required_snr, ["-snr", 300, "--n-draws", 20]),
    }
    expected_figures = {"error_nonoise": ("sim", "true"), "error_noise": ("sim", "sim_STD", "true", "sd", "coverage"),
                        "required_snr": ("minSNR", "params")}
    for kind, (module, extra) in runs.items():
        folder = tmp_path / kind
        # one true D keeps the figure count (and the rendering time) down
        args = ["-model", "one-step", "-ofolder", folder, "-v", 0] + GRID + ["-D", "1.5e-3"] + extra
        assert run_script(module, args) == 0
        path = only_result(folder)
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            assert str(data["kind"]) == kind
            assert [str(v) for v in data["err_order"]] == ["f", "Dstar", "D", "fDstar"]
            assert all(data[n].dtype != object for n in names)
        assert COMMON_NAMES | ISSUE_NAMES[kind] <= names
        doc = json.loads(open(path[:-4] + ".json").read())
        assert doc["kind"] == kind and doc["seed"] == 0 and doc["engine"] == "fast"
        assert doc["bvals"] == [float(b) for b in BVALS.split(",")] and doc["grid"]["D_range"] == [1.5e-3]
        assert set(doc["arrays"]) == names

        fmt = "pdf" if kind == "error_noise" else "png"
        base = tmp_path / "fig" / kind
        assert run_script(ivim_simu_plot, ["-input", path, "-oname", base, "--format", fmt, "-v", 0]) == 0
        for name in expected_figures[kind]:
            with open(f"{base}_{name}_D0.{fmt}", "rb") as fh:
                assert fh.read(5) == (b"%PDF-" if fmt == "pdf" else b"\x89PNG\r")
        assert len(glob.glob(f"{base}_*")) == len(expected_figures[kind])


def test_sharded_script_runs_merge_to_the_unsharded_file(tmp_path):
    args = ["-model", "two-step", "-snr", 150, "--n-draws", 15, "-v", 0] + GRID
    assert run_script(ivim_simu_compute_error_noise, args + ["-ofolder", tmp_path / "whole"]) == 0
    for k in (1, 2):
        assert run_script(ivim_simu_compute_error_noise,
                          args + ["-ofolder", tmp_path / "shards", "--shard", f"{k}/2"]) == 0
    shard_files = sorted(glob.glob(str(tmp_path / "shards" / "sim_results_*_shard*of2.npz")))
    assert len(shard_files) == 2
    merged_path = tmp_path / "merged.npz"
    assert run_script(ivim_simu_plot, ["-input", *shard_files, "--merged", merged_path, "-v", 0]) == 0
    with np.load(only_result(tmp_path / "whole"), allow_pickle=False) as whole, \
            np.load(merged_path, allow_pickle=False) as merged:
        assert set(whole.files) == set(merged.files)
        for name in whole.files:
            np.testing.assert_array_equal(whole[name], merged[name])
    merged_from = json.loads(open(tmp_path / "merged.json").read())["merged_from"]
    assert [m["abspath"] for m in merged_from] == [os.path.abspath(p) for p in shard_files]


def test_outputs_are_refused_without_force_and_user_errors_exit_1(tmp_path, capsys):
    merged = tmp_path / "merged.npz"
    folder = tmp_path / "out"
    assert run_script(ivim_simu_compute_error_nonoise, ["-model", "two-step", "-ofolder", folder, "-v", 0] + GRID) == 0
    path = only_result(folder)
    merged.write_bytes(b"not mine")
    assert run_script(ivim_simu_plot, ["-input", path, "--merged", merged]) == 1
    assert "merged.npz: already exists (use --force" in capsys.readouterr().err
    assert merged.read_bytes() == b"not mine"
    assert run_script(ivim_simu_plot, ["-input", path, "--merged", merged, "--force", "-v", 0]) == 0
    with np.load(merged, allow_pickle=False) as data:
        assert str(data["kind"]) == "error_nonoise"

    with pytest.raises(SystemExit) as exc:
        run_script(ivim_simu_compute_error_nonoise, ["-model", "one-step", "-ofolder", tmp_path / "bad", "-F", "0.1:x:0.3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ivim_simu_compute_error_nonoise.py: error: argument -F") and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as exc:
        run_script(ivim_simu_compute_error_nonoise,
                   ["-model", "two-step", "--bounds-version", "2019", "-ofolder", tmp_path / "bad"])
    assert exc.value.code == 2
    assert "--bounds-version applies to -model one-step only" in capsys.readouterr().err
    not_npz = tmp_path / "x.npz"
    not_npz.write_bytes(b"junk")
    assert run_script(ivim_simu_plot, ["-input", not_npz, "-oname", tmp_path / "p"]) == 1
    assert "cannot read as a simulation result" in capsys.readouterr().err


@pytest.mark.parametrize("module, flag, value", [(ivim_simu_compute_error_noise, "-snr", 0),
                                                 (ivim_simu_compute_required_snr, "-snr", -5),
                                                 (ivim_simu_compute_required_snr, "--max-error", -1)])
def test_non_positive_snr_or_error_margin_is_a_usage_error(tmp_path, capsys, module, flag, value):
    args = ["-model", "two-step", "-ofolder", tmp_path / "out", flag, value] + GRID
    if flag != "-snr":
        args += ["-snr", 100]
    with pytest.raises(SystemExit) as exc:
        run_script(module, args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "must be a finite number > 0" in err
    assert not (tmp_path / "out").exists()


def test_interrupted_or_failed_compute_leaves_no_output_folder(tmp_path, capsys, monkeypatch):
    args = ["-model", "two-step", "-ofolder", tmp_path / "out"] + GRID

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(simu, "run_errors", interrupt)
    assert run_script(ivim_simu_compute_error_nonoise, args) == 130
    assert "interrupted, no output written" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    assert run_script(ivim_simu_compute_error_nonoise, args + ["-v", 0]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write in it" in err and "No space left on device" in err
    assert os.listdir(tmp_path) == []


def test_plot_writes_all_outputs_or_none(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    assert run_script(ivim_simu_compute_error_nonoise,
                      ["-model", "two-step", "-ofolder", tmp_path / "out", "-v", 0] + GRID) == 0
    path = only_result(tmp_path / "out")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert run_script(ivim_simu_plot, ["-input", path, "-oname", a_file / "plot"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a_file exists and is not a folder" in err

    savefig, calls = Figure.savefig, []

    def fail_second(fig, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", fail_second)
    argv = ["-input", path, "--merged", tmp_path / "plots" / "merged.npz", "-oname", tmp_path / "plots" / "p"]
    assert run_script(ivim_simu_plot, argv) == 1
    assert "No space left on device" in capsys.readouterr().err and len(calls) == 2
    assert sorted(os.listdir(tmp_path)) == ["a_file", "out"]


def test_seed_help_says_what_the_seed_drives():
    """One --seed for every script (ivim_common.cli): its help names each thing it seeds."""
    for script in (ivim_simu_compute_error_nonoise, ivim_simu_compute_error_noise):
        text = " ".join(script.get_parser().format_help().split())
        assert "seed of every random draw (noise, search starts, the lmfit engine;" in text


@pytest.mark.parametrize("flags, message", [(["--shard", "9/9"], "--shard: 9 shards but the grid has only 8 cells"),
                                            (["--shard", "0/2"], "argument --shard: need 1 <= K <= N"),
                                            (["-F", "0.1,1.5"], "argument -F: a fraction"),
                                            (["-bval", "0,0,5,800"], "argument -bval: need at least 4 distinct"),
                                            (["-Dstar", "0,2e-2"], "argument -Dstar: every value must be > 0")])
def test_bad_grid_flags_are_usage_errors(tmp_path, capsys, flags, message):
    args = ["-model", "two-step", "-snr", 150, "--n-draws", 5, "-ofolder", tmp_path / "out"] + GRID + flags
    with pytest.raises(SystemExit) as exc:
        run_script(ivim_simu_compute_error_noise, args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", [ivim_simu_compute_error_nonoise, ivim_simu_compute_required_snr])
def test_negative_seed_is_a_usage_error(tmp_path, capsys, module):
    with pytest.raises(SystemExit) as exc:
        run_script(module, ["-model", "two-step", "-ofolder", tmp_path / "out", "--seed", -1] + GRID)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --seed: must be >= 0, got -1" in err
    assert not (tmp_path / "out").exists()


def test_results_follow_the_umask_and_two_runs_are_not_shards(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        for _ in range(2):
            assert run_script(ivim_simu_compute_error_nonoise,
                              ["-model", "two-step", "-ofolder", tmp_path, "-v", 0] + GRID) == 0
            time.sleep(1.1)   # a new timestamp, a new file name
    finally:
        os.umask(old)
    paths = sorted(glob.glob(str(tmp_path / "sim_results_*.npz")))
    assert len(paths) == 2
    for path in paths + [p[:-4] + ".json" for p in paths]:
        assert os.stat(path).st_mode & 0o777 == 0o644
    assert run_script(ivim_simu_plot, ["-input", *paths, "-oname", tmp_path / "p"]) == 1
    assert "two complete runs, not shards of one" in capsys.readouterr().err
