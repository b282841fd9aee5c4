"""Protocol design: the Cramér-Rao bound, the bound's required SNR, the search, the script."""
import json
import os

import numpy as np
import pytest

from conftest import BVALS, run_script
from ivim_common import design, io, model
from ivim_common import simulation as simu
from ivim_common.errors import InputError

SCRIPT = "ivim_simu_optimize_bvals.py"
TRUTH = np.array([[0.15, 20e-3, 1.0e-3, 0.15 * 20e-3]])       # f, D*, D, f·D* (simulation.ERR_ORDER)
DENSE = np.repeat([0, 10, 20, 40, 80, 150, 300, 500, 650, 800], 3).astype(float)


def _numeric_jacobian(bvals, params, rel=1e-6):
    cols = []
    for i in range(4):
        up, down = list(params), list(params)
        h = rel * abs(params[i])
        up[i] += h
        down[i] -= h
        cols.append((model.ivim_signal(bvals, *up) - model.ivim_signal(bvals, *down)) / (2 * h))
    return np.stack(cols, axis=-1)


def test_jacobian_matches_finite_differences():
    params = (600.0, 1.1e-3, 0.12, 25e-3)
    num = _numeric_jacobian(BVALS, params)
    np.testing.assert_allclose(model.ivim_jacobian(BVALS, *params), num, rtol=1e-6, atol=1e-9 * np.abs(num).max())


def test_one_step_bound_is_the_inverse_of_a_finite_difference_fisher_matrix():
    f, dstar, d, _ = TRUTH[0]
    jac = _numeric_jacobian(DENSE, (600.0, d, f, dstar))
    cov = np.linalg.inv(jac.T @ jac) * 600.0 ** 2          # σ = S0: SNR 1
    sd = np.sqrt(np.diag(cov))
    fd_sd = np.sqrt(np.array([dstar, f]) @ cov[2:, 2:] @ np.array([dstar, f]))
    expected = np.array([sd[2] / f, sd[3] / dstar, sd[1] / d, fd_sd / (f * dstar)])
    np.testing.assert_allclose(design.relative_sd(DENSE, TRUTH)[0], expected, rtol=1e-6)


def _monte_carlo_relative_sd(approach, snr, n_draws=3000):
    sim = simu.Simulation(bvals=DENSE, F_range=TRUTH[:, 0], Dstar_range=TRUTH[:, 1], D_range=TRUTH[:, 2],
                          approach=approach, seed=3, n_draws=n_draws)
    errors = simu.signed_errors(sim, [0], snr)[0] / 100.0          # (n_draws, 4) relative errors
    assert not np.isnan(errors).any()
    return errors.std(axis=0)


@pytest.mark.parametrize("approach", ["one-step", "two-step"])
def test_bound_matches_the_spread_of_the_fast_fitter_at_high_snr(approach):
    """At SNR 3000 the fitter is unbiased enough: its SD is the bound's (two-step: the linearised
    covariance of the two-stage estimator) within 10 %, for f, D*, D and f·D*."""
    snr = 3000.0
    mc = _monte_carlo_relative_sd(approach, snr)
    bound = design.relative_sd(DENSE, TRUTH, approach)[0] / snr
    keep = slice(None) if approach == "one-step" else [0, 1, 3]     # two-step: D from the line only
    np.testing.assert_allclose(mc[keep], bound[keep], rtol=0.10)
    if approach == "two-step":
        np.testing.assert_allclose(mc[2], bound[2], rtol=0.10)


def test_two_step_bound_exceeds_the_bound_with_d_known():
    """The error of D̂ carried into the second stage can only add variance to f and D*."""
    f, dstar, d, _ = TRUTH[0]
    jac = model.ivim_jacobian(DENSE, 600.0, d, f, dstar)[:, [0, 2, 3]]
    known = np.sqrt(np.diag(np.linalg.inv(jac.T @ jac)))[1:] * 600.0 / np.array([f, dstar])
    two_step = design.relative_sd(DENSE, TRUTH, "two-step")[0]
    assert np.all(two_step[:2] > known)


def test_required_snr_from_the_bound_maps_mean_abs_error_to_sd():
    grid = (np.array([0.1, 0.2]), np.array([10e-3, 30e-3]), np.array([1e-3]))
    snr = design.required_snr_crlb(BVALS, grid, "FDstar", 10.0)
    rsd1 = design.relative_sd(BVALS, design.grid_truth(*grid))
    np.testing.assert_allclose(snr.ravel(), 100 * np.sqrt(2 / np.pi) * rsd1[:, 3] / 10.0)
    np.testing.assert_allclose(design.required_snr_crlb(BVALS, grid, "FDstar", 5.0), 2 * snr)
    assert np.all(design.required_snr_crlb(BVALS, grid, "all") >= snr)
    assert snr.shape == (2, 2, 1)


def test_too_few_distinct_bvals_cannot_be_estimated():
    assert np.all(np.isinf(design.relative_sd([0, 0, 100, 800, 800], TRUTH)))
    assert np.all(np.isinf(design.relative_sd([0, 100, 200, 400, 800], TRUTH, "two-step")))  # one b >= 500
    assert np.all(np.isfinite(design.relative_sd([0, 100, 200, 600, 800], TRUTH, "two-step")))


def test_single_parameter_condition_in_the_monte_carlo():
    err = np.array([[5.0, 20.0, 3.0, 12.0]])
    assert simu.condition_holds(err, "f", 10.0)[0] and not simu.condition_holds(err, "Dstar", 10.0)[0]


def test_search_respects_budget_fixed_bounds_and_step():
    grid = (np.array([0.1, 0.2]), np.array([10e-3, 30e-3]), np.array([1e-3]))
    kwargs = dict(n_volumes=9, bmin=20.0, bmax=700.0, b_step=20.0, fixed_bvals=(20.0, 700.0, 700.0),
                  n_starts=3, top_k=2, seed=5)
    found = design.search_crlb(grid, **kwargs)
    assert 1 <= len(found) <= 2
    for cand in found:
        b = cand["bvals"]
        assert len(b) == 9 and np.all(np.diff(b) >= 0)
        assert np.all((b >= 20) & (b <= 700))
        assert np.all((b - 20) % 20 == 0)
        assert np.sum(b == 700) >= 2 and np.sum(b == 20) >= 1
    assert [c["crlb_objective"] for c in found] == sorted(c["crlb_objective"] for c in found)
    again = design.search_crlb(grid, **kwargs)
    assert all(np.array_equal(a["bvals"], b["bvals"]) for a, b in zip(found, again))
    # the objective (mean over cells of the bound's required SNR) beats an evenly spread protocol
    spread = np.concatenate([[20, 700, 700], np.linspace(100, 600, 6)])
    assert found[0]["crlb_objective"] < design.required_snr_crlb(spread, grid).mean()
    np.testing.assert_allclose(found[0]["crlb_objective"], design.required_snr_crlb(found[0]["bvals"], grid).mean())


def test_candidate_bvals_include_bmax_and_fixed_off_grid():
    b = design.candidate_bvals(0, 95, 10, (33,))
    assert b[0] == 0 and b[-1] == 95 and 33 in b and 90 in b


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_volumes=3), "free parameters"),
    (dict(bmin=800.0, bmax=800.0), "--bmax"),
    (dict(fixed_bvals=(900.0,)), "outside"),
    (dict(n_volumes=4, fixed_bvals=(0.0,) * 5), "only -n 4"),
])
def test_check_budget_refuses(kwargs, message):
    args = dict(n_volumes=11, bmin=0.0, bmax=800.0, b_step=5.0, fixed_bvals=(), approach="one-step")
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        design.check_budget(**args)


def test_script_conditions_are_the_design_conditions():
    import ivim_simu_optimize_bvals as script

    assert script.CONDITIONS == design.CONDITIONS


@pytest.mark.parametrize("extra", [
    ["-n", "3"],
    ["-n", "11", "--bmin", "800", "--bmax", "800"],
    ["-n", "11", "--fixed-bvals", "0,1000"],
    ["-n", "4", "--fixed-bvals", "0,0,0,0,800"],
    ["-n", "11", "-F", ","],
    ["-n", "5", "-model", "two-step", "--bmax", "400"],
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, extra):
    out = tmp_path / "design"
    args = ["-model", "one-step", "-ofolder", out, *extra]
    result = run_script(SCRIPT, *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "error" in result.stderr
    assert not out.exists()


def test_script_end_to_end_on_a_tiny_grid(tmp_path):
    out = tmp_path / "design"
    args = ["-model", "one-step", "-ofolder", out, "-n", "6", "-F", "0.1,0.2", "-Dstar", "10e-3,30e-3",
            "-D", "1e-3", "--n-draws", "40", "--starts", "3", "--top-k", "2", "--b-step", "50",
            "--fixed-bvals", "0", "--compare-bvals", "0,50,100,200,400,800", "-j", "1", "--seed", "7"]
    result = run_script(SCRIPT, *args)
    assert result.returncode == 0, result.stderr
    bvals = np.loadtxt(out / "optimized.bval", ndmin=1)
    assert len(bvals) == 6 and 0 in bvals and np.all(bvals % 50 == 0) and bvals.max() <= 800
    with open(out / "optimize_bvals.json", encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["settings"]["seed"] == 7 and doc["settings"]["n_volumes"] == 6
    assert doc["optimized"]["bvals"] == bvals.tolist()
    assert np.array(doc["optimized"]["min_snr"], dtype=float).shape == (2, 2, 1)
    assert np.array(doc["reference"]["mean_err_at_min_snr"], dtype=float).shape == (4, 2, 2, 1)
    assert sum(c["chosen"] for c in doc["candidates"]) == 1 and doc["run_time_s"] > 0
    assert os.path.getsize(out / "optimize_bvals.png") > 0
    again = run_script(SCRIPT, *args)           # outputs exist: refused without --force
    assert again.returncode == 1 and "--force" in again.stderr
    forced = run_script(SCRIPT, *args, "--force")
    assert forced.returncode == 0, forced.stderr
    with open(out / "optimize_bvals.json", encoding="utf-8") as f:
        assert json.load(f)["optimized"] == doc["optimized"]       # seeded: the same design


def test_required_snr_script_method_crlb(tmp_path):
    out = tmp_path / "crlb"
    result = run_script("ivim_simu_compute_required_snr.py", "-model", "two-step", "-ofolder", out,
                        "--method", "crlb", "-F", "0.1,0.2", "-Dstar", "10e-3,30e-3", "-D", "1e-3", "-v", "0")
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("*.npz")
    arrays = io.load_results(path)
    grid = (np.array([0.1, 0.2]), np.array([10e-3, 30e-3]), np.array([1e-3]))
    expected = design.required_snr_crlb(np.array(arrays["bvals"]), grid, approach="two-step")
    np.testing.assert_allclose(arrays["min_snr"], expected)
    np.testing.assert_allclose(arrays["mean_err_at_min_snr"][3], 10.0)      # f·D* meets the criterion exactly
    assert json.loads(str(arrays["settings"]))["method"] == "crlb"


def test_fitter_aware_search_keeps_a_usable_initialisation_line():
    """With init_line, two b-values close together above 400 do not make a line: the search keeps
    them apart (the bound alone puts no volume there)."""
    grid = (np.array([0.05, 0.2]), np.array([5e-3, 30e-3]), np.array([1e-3]))
    found = design.search_crlb(grid, 7, b_step=50.0, fixed_bvals=(0.0,), n_starts=3, top_k=3, init_line=True)
    for cand in found:
        high = np.unique(cand["bvals"][cand["bvals"] >= 400])
        assert high.size >= 2 and high.max() - high.min() >= 200
    truth = design.grid_truth(*grid)
    near, apart = (np.array([[0, 0, 50, 100, 200, 750, 800]]), np.array([[0, 0, 50, 100, 200, 400, 800]]))
    assert (design._objective(near, truth, "FDstar", "mean", "one-step", "2020", True)
            > 1.3 * design._objective(apart, truth, "FDstar", "mean", "one-step", "2020", True))


def test_check_budget_refuses_a_grid_with_too_few_bvals():
    with pytest.raises(InputError, match="only 3 b-values"):
        design.check_budget(11, 0.0, 10.0, 5.0, (), "one-step")
