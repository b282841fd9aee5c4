"""How far to trust each voxel: uncertainty, bounds flags, model choice, quality (issue 15)."""
import json
import os

import numpy as np
import pytest

import ivim_fitting
from conftest import BVALS, write_dataset
from ivim_common import IvimFit, IvimModel, api, model, trust
from ivim_common import simulation as simu

TRUTH = np.array([1000.0, 1e-3, 0.12, 25e-3])        # S0, D, f, D*


def gaussian(truth, n, snr, seed):
    rng = np.random.default_rng(seed)
    clean = model.ivim_signal(BVALS, *np.atleast_2d(truth).T)
    return clean + rng.normal(0.0, truth[..., :1] / snr if np.ndim(truth) > 1 else truth[0] / snr,
                              (n, len(BVALS)))


def stacked(out, suffix=""):
    return np.stack([out[p + suffix] for p in model.PARAM_NAMES], axis=1)


def test_fisher_sd_matches_the_monte_carlo_sd_at_high_snr():
    out = api.fit_voxels(BVALS, gaussian(TRUTH, 1000, 200, seed=1))
    clear = out["bounds_hit"] == 0
    assert clear.mean() > 0.95
    empirical = stacked(out)[clear].std(axis=0)
    predicted = np.median(stacked(out, "_sd")[clear], axis=0)
    np.testing.assert_allclose(predicted / empirical, 1.0, atol=0.12)
    # with 11 b-values and 4 parameters sigma-hat has 7 degrees of freedom: ±1.96 SD covers
    # P(|t_7| <= 1.96) = 0.91 of the draws, not 0.95
    inside = np.abs(stacked(out) - TRUTH) <= 1.96 * stacked(out, "_sd")
    np.testing.assert_allclose(inside[clear].mean(axis=0), 0.91, atol=0.03)


def test_fisher_sd_is_lmfits_stderr_at_the_same_point():
    import lmfit

    signal = gaussian(TRUTH, 3, 100, seed=2)
    out = api.fit_voxels(BVALS, signal)
    for i in range(3):
        params = lmfit.Parameters()
        for name in model.PARAM_NAMES:
            params.add(name, value=out[name][i])            # no bounds: the plain least-squares stderr
        result = lmfit.minimize(lambda p: model.ivim_signal(BVALS, *p.valuesdict().values()) - signal[i],
                                params, method="leastsq")
        stderr = [result.params[name].stderr for name in model.PARAM_NAMES]
        np.testing.assert_allclose(stacked(out, "_sd")[i], stderr, rtol=2e-3)


def test_fisher_sd_kernel_is_that_of_the_model_jacobian():
    """The compiled Fisher SD writes out model.ivim_jacobian: σ̂²·(JᵀJ)⁻¹ over the free
    parameters, and D*p's SD from D's and D*'s covariance (D* alone where D is held)."""
    rng = np.random.default_rng(6)
    params = np.column_stack([rng.uniform(500, 1500, 6), rng.uniform(0.5e-3, 2e-3, 6),
                              rng.uniform(0.05, 0.3, 6), rng.uniform(5e-3, 50e-3, 6)])
    rss = rng.uniform(100, 1000, 6)
    free = np.ones((6, 4), dtype=bool)
    free[1, 1] = free[2, 0] = free[3, 2] = False
    sd, sd_pool = trust.fisher_sd(BVALS, params, rss, free, 4)
    for v in range(6):
        jac = model.ivim_jacobian(BVALS, *params[v])[:, free[v]]
        cov = rss[v] / (len(BVALS) - 4) * np.linalg.inv(jac.T @ jac)
        np.testing.assert_allclose(sd[v, free[v]], np.sqrt(np.diag(cov)), rtol=1e-9)
        assert np.isnan(sd[v, ~free[v]]).all()
        d = np.count_nonzero(free[v, :1])            # D's row in cov (where free), D*'s the last
        pool = cov[-1, -1] + (cov[d, d] + 2 * cov[d, -1] if free[v, 1] else 0.0)
        assert sd_pool[v] == pytest.approx(np.sqrt(pool), rel=1e-9)


def test_fit_mono_is_the_least_squares_fit():
    """At the mono-exponential fit the RSS's derivative over ADC (S0 at its best) is 0, and the
    compiled kernel gives each voxel the result it gives that voxel alone."""
    signal = gaussian(TRUTH, 200, 50, seed=7)
    s0, adc, rss = trust.fit_mono(BVALS, signal)
    for step in (1e-9, -1e-9):
        e = np.exp(-BVALS * (adc + step)[:, None])
        s0_near = np.einsum("vb,vb->v", signal, e) / np.einsum("vb,vb->v", e, e)
        assert (((signal - s0_near[:, None] * e) ** 2).sum(axis=1) >= rss * (1 - 1e-12)).all()
    np.testing.assert_allclose(model.ivim_signal(BVALS, s0, adc, 0.0, 0.0), signal, rtol=0.2)
    alone = trust.fit_mono(BVALS, signal[17:18])
    assert (alone[1][0], alone[2][0]) == (adc[17], rss[17])


def test_same_parameters_give_the_same_sd_whatever_the_engine(monkeypatch):
    """The SD is a function of the fitted parameters only: an engine returning the fast
    engine's parameters gets bit-identical SD maps."""
    signal = gaussian(TRUTH, 50, 80, seed=3)
    fast = api.fit_voxels(BVALS, signal, engine="fast")
    lmfit_engine = api.engines.get("lmfit")
    monkeypatch.setattr(lmfit_engine, "fit", lambda b, s, init, lo, hi, vary, seeds: {"params": stacked(fast)})
    other = api.fit_voxels(BVALS, signal, engine="lmfit")
    for name in ("S0_sd", "D_sd", "Fivim_sd", "Dstar_sd", "bounds_hit", "model_choice", "RMSE", "AICc"):
        np.testing.assert_array_equal(other[name], fast[name], err_msg=name)


@pytest.mark.slow
def test_lmfit_and_fast_give_the_same_sd():
    signal = gaussian(TRUTH, 2, 300, seed=4)
    fast = api.fit_voxels(BVALS, signal, engine="fast")
    ref = api.fit_voxels(BVALS, signal, engine="lmfit", seed=3)
    np.testing.assert_allclose(stacked(ref), stacked(fast), rtol=1e-3)
    np.testing.assert_allclose(stacked(ref, "_sd"), stacked(fast, "_sd"), rtol=1e-2)


def test_bounds_flags_and_no_sd_at_a_bound():
    lo = np.array([[500.0, 0.15e-3, 0.0, 2e-3]] * 3)
    hi = np.array([[1500.0, 1.2e-3, 0.2, 50e-3]] * 3)
    params = np.array([[1000.0, 1e-3, 0.1, 20e-3],          # inside
                       [1000.0, 1.2e-3 * 1.04, 0.0, 30e-3],  # D beyond its upper bound (refinement), f at 0
                       [1499.5, 0.15e-3, 0.2, 2e-3]])        # within 0.1 % of S0 high; D, D* low; f high
    flags, at_lo, at_hi = model.bounds_hit(params, lo, hi, np.ones(4, bool))
    assert flags.tolist() == [0, 8 + 16, 2 + 4 + 32 + 64]
    assert model.bounds_hit(params, lo, hi, np.array([True, False, True, True]))[0].tolist() == [0, 16, 2 + 32 + 64]
    # a fit that ends with f = 0: f and D* (undetermined) have no SD, S0 and D have one
    mono = model.ivim_signal(BVALS, 800.0, 1.2e-3, 0.0, 0.02)[None] + np.random.default_rng(5).normal(0, 2, (20, 11))
    out = api.fit_voxels(BVALS, mono)
    at_zero = (out["bounds_hit"].astype(int) & 16) > 0
    assert at_zero.sum() >= 5
    assert np.isnan(out["Fivim_sd"][at_zero]).all() and np.isnan(out["Dstar_sd"][at_zero]).all()
    assert np.isfinite(out["S0_sd"][at_zero]).all() and np.isfinite(out["D_sd"][at_zero]).all()


def test_model_choice_on_mono_and_clearly_biexponential_voxels():
    rng = np.random.default_rng(6)
    n = 300
    mono = np.column_stack([np.full(n, 1000.0), rng.uniform(0.5e-3, 1.5e-3, n), np.zeros(n),
                            rng.uniform(10e-3, 40e-3, n)])
    bi = mono.copy()
    bi[:, 2] = rng.uniform(0.1, 0.2, n)
    for truth, want, share in ((mono, 0, 0.96), (bi, 1, 0.97)):
        signal = model.ivim_signal(BVALS, *truth.T) + rng.normal(0, 10, (n, 11))   # SNR 100
        out = api.fit_voxels(BVALS, signal)
        assert np.mean(out["model_choice"] == want) >= share
        # ADC of the mono-exponential voxels is their D
        if want == 0:
            np.testing.assert_allclose(np.median(out["ADC"] / truth[:, 1]), 1.0, atol=0.01)
    aicc, bic = model.information_criteria(np.array([2.0]), 11, 4)
    assert aicc[0] == pytest.approx(11 * np.log(2 / 11) + 8 + 40 / 6)
    assert bic[0] == pytest.approx(11 * np.log(2 / 11) + 4 * np.log(11))
    assert np.isnan(model.information_criteria(np.array([2.0]), 5, 4)[0][0])   # n <= k + 1


def test_failed_voxels_have_nan_trust_maps():
    signal = gaussian(TRUTH, 3, 100, seed=7)
    signal[1, 4] = -1.0
    out = api.fit_voxels(BVALS, signal)
    for name in ("S0_sd", "ADC", "AICc", "AICc_mono", "model_choice", "RMSE", "bounds_hit"):
        assert np.isnan(out[name][1]) and np.isfinite(out[name][[0, 2]]).all(), name


def test_bootstrap_is_seeded_per_voxel_and_does_not_depend_on_chunks():
    signal = gaussian(TRUTH, 12, 100, seed=8)
    fitter = IvimModel(BVALS)
    runs = [fitter.fit_voxels(signal, np.arange(100, 112), seed=4, chunk_size=c, bootstrap=30) for c in (5, 12)]
    for name in runs[0]:
        np.testing.assert_array_equal(runs[0][name], runs[1][name], err_msg=name)
    other_seed = fitter.fit_voxels(signal, np.arange(100, 112), seed=5, bootstrap=30)
    assert not np.array_equal(other_seed["Fivim_sd"], runs[0]["Fivim_sd"])
    out = runs[0]
    assert (out["Fivim_ci_low"] <= out["Fivim"]).all() and (out["Fivim"] <= out["Fivim_ci_high"]).all()
    # a voxel's bootstrap is its own: the same voxel id in a smaller call gives the same numbers
    alone = fitter.fit_voxels(signal[3:4], [103], seed=4, bootstrap=30)
    assert alone["D_sd"][0] == out["D_sd"][3]


@pytest.mark.slow
def test_bootstrap_does_not_depend_on_jobs_and_agrees_with_fisher():
    signal = gaussian(TRUTH, 40, 200, seed=9)
    fitter = IvimModel(BVALS)
    one = fitter.fit_voxels(signal, seed=2, bootstrap=100, jobs=1)
    two = fitter.fit_voxels(signal, seed=2, bootstrap=100, jobs=2, chunk_size=7)
    for name in one:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)
    fisher = api.fit_voxels(BVALS, signal)
    ratio = np.nanmedian(stacked(one, "_sd") / stacked(fisher, "_sd"), axis=0)
    np.testing.assert_allclose(ratio, 1.0, atol=0.25)


def test_repeated_bvalues_give_sigma():
    bvals = np.array([0, 0, 0, 500, 500, 1000])
    rng = np.random.default_rng(10)
    signal = model.ivim_signal(bvals, 1000.0, 1e-3, 0.0, 0.02)[None] + rng.normal(0, 5, (4000, 6))
    np.testing.assert_allclose(np.mean(model.repeat_noise_sd(bvals, signal) ** 2), 25.0, rtol=0.03)
    assert model.repeat_noise_sd(BVALS, signal[:, :1].repeat(11, 1)) is None


def test_cli_writes_the_trust_maps_and_records_them(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", mask_voxels=4)
    out = tmp_path / "out"
    argv = ["-i", data["dwi"], "-b", data["bval"], "-ma", data["mask"], "-o", out, "-j", 1, "-v", 0,
            "--bootstrap", 8, "--model-choice", "bic", "--seed", 3]
    assert ivim_fitting.main([str(a) for a in argv]) == 0
    names = {f[:-len("_map.nii.gz")] for f in os.listdir(out) if f.endswith("_map.nii.gz")}
    for name in ("ADC", "AICc", "AICc_mono", "model_choice", "RMSE", "bounds_hit",
                 *(f"{p}_{k}" for p in model.PARAM_NAMES for k in ("sd", "ci_low", "ci_high"))):
        assert name in names, name
    sidecar = json.loads((out / "ivim_fitting.json").read_text())
    assert sidecar["model_choice"]["criterion"] == "bic"
    assert sidecar["uncertainty"]["method"] == "bootstrap" and sidecar["uncertainty"]["bootstrap"] == 8
    assert sidecar["bounds_hit_bits"]["16"] == "Fivim at its lower bound"
    summary = sidecar["trust_summary"]
    fit = IvimFit.from_folder(str(out))
    fitted = fit.exception[fit.mask] == 0
    assert summary["share_model_choice_ivim"] == pytest.approx(np.mean(fit.model_choice[fit.mask][fitted] == 1))
    assert set(summary["share_at_bound"]) == {f"{p} {s}" for p in model.PARAM_NAMES for s in ("lower", "upper")}
    assert summary["median_rmse_over_sigma"] is None                # no repeated b-value
    assert fit.choice_criterion == "bic" and fit.bootstrap == 8
    assert fit.Fivim_sd.shape == fit.shape and np.isfinite(fit.Fivim_ci_low[fit.mask][fitted]).all()


def test_simulation_reports_predicted_sd_and_coverage():
    sim = simu.Simulation(bvals=BVALS, F_range=np.array([0.15]), Dstar_range=np.array([20e-3]),
                          D_range=np.array([1.0e-3]), n_draws=400, seed=1)
    arrays = simu.run_errors(sim, snr=300)
    order = [str(v) for v in arrays["err_order"]]
    for p in ("f", "Dstar", "D"):
        j = order.index(p)
        assert arrays["n_with_sd"][j].item() > 380
        assert arrays["mean_pred_sd"][j].item() == pytest.approx(arrays["emp_sd"][j].item(), rel=0.15)
        assert 0.86 <= arrays["coverage_95"][j].item() <= 0.96
    assert np.isnan(arrays["mean_pred_sd"][order.index("fDstar")]).all()


def test_fisher_sd_of_dstar_in_the_osipi_convention_is_that_of_d_plus_dstar():
    """With --dstar-convention osipi, Dstar_sd is the SD of D*p = D + D*: the Fisher SD computed
    directly in the (S0, D, f, D*p) parameters of S = S0·((1 - f)·e^(-bD) + f·e^(-bD*p))."""
    from ivim_common import IvimModel

    b = np.array([0, 5, 10, 20, 30, 50, 75, 150, 250, 600, 700, 800], dtype=float)
    rng = np.random.default_rng(5)
    signal = model.ivim_signal(b, 1000.0, 1.1e-3, 0.12, 25e-3)[None] + rng.normal(0, 5, (1, b.size))
    toolbox = IvimModel(b).fit(signal)
    osipi = IvimModel(b, dstar_convention="osipi").fit(signal)
    s0, d, f, dp = toolbox.S0[0], toolbox.D[0], toolbox.f[0], toolbox.D[0] + toolbox.Dstar[0]
    assert osipi.Dstar[0] == pytest.approx(dp, rel=1e-12)
    u, v = np.exp(-b * d), np.exp(-b * dp)
    jac = np.column_stack([(1 - f) * u + f * v, -b * s0 * (1 - f) * u, s0 * (v - u), -b * s0 * f * v])
    resid = s0 * ((1 - f) * u + f * v) - signal[0]
    cov = resid @ resid / (b.size - 4) * np.linalg.inv(jac.T @ jac)
    assert osipi.Dstar_sd[0] == pytest.approx(np.sqrt(cov[3, 3]), rel=1e-6)
    assert osipi.D_sd[0] == pytest.approx(toolbox.D_sd[0], rel=1e-12)
    assert toolbox.Dstar_sd[0] != pytest.approx(osipi.Dstar_sd[0], rel=1e-3)


def test_bounds_on_dstar_p_are_flagged_on_d_plus_dstar():
    """With D*'s bounds on D*p = D + D* (the osipi preset), D* is 'at a bound' when D + D* is:
    bit 64/128, and no Fisher SD for it."""
    lo, hi = np.array([[700.0, 1e-5, 0.0, 1e-5]]), np.array([[1300.0, 5e-3, 1.0, 0.2]])
    params = np.array([[1000.0, 1e-3, 0.1, 4e-3], [1000.0, 1e-3, 0.1, 0.199], [1000.0, 1e-3, 0.1, 0.05]])
    flags, _, at_hi = model.bounds_hit(params, np.repeat(lo, 3, 0), np.repeat(hi, 3, 0), np.ones(4, bool),
                                       pool=(5e-3, 0.2))
    assert flags.tolist() == [64, 128, 0] and at_hi[1, 3]
    assert model.bounds_hit(params, np.repeat(lo, 3, 0), np.repeat(hi, 3, 0), np.ones(4, bool))[0].tolist() == [0, 0, 0]


def test_force_removes_the_maps_of_the_run_it_replaces(tmp_path):
    """A --force run into a folder of another engine's maps leaves no map it did not write."""
    from ivim_common import IvimModel

    signal = model.ivim_signal(BVALS, 600.0, 1e-3, 0.1, 20e-3)[None, None] * np.ones((2, 1, 1))
    IvimModel(BVALS, engine="bayes").fit(signal).to_folder(tmp_path / "out")
    assert (tmp_path / "out" / "Fivim_ci_low_map.nii.gz").exists()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    IvimModel(BVALS).fit(signal).to_folder(tmp_path / "out", force=True)
    written = json.loads((tmp_path / "out" / "ivim_fitting.json").read_text())["maps"]
    assert sorted(os.listdir(tmp_path / "out")) == sorted([*written.values(), "ivim_fitting.json", "notes.txt"])
    assert "Fivim_ci_low" not in written
