"""The fast engine: exact amplitude step, agreement with the lmfit reference, determinism."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import BVALS
from ivim_common import fit, model, voxelpool


def _noisy(n, snr, seed, bvals=BVALS):
    """Seeded voxels with truths inside every approach's bounds, Rician noise at S0/SNR."""
    rng = np.random.default_rng(seed)
    truth = np.column_stack([rng.uniform(300, 900, n), rng.uniform(0.4e-3, 1.8e-3, n),
                             rng.uniform(0.04, 0.18, n), rng.uniform(10e-3, 30e-3, n)])
    clean = model.ivim_signal(bvals, *truth.T)
    sigma = truth[:, :1] / snr
    return truth, np.hypot(clean + rng.normal(0, 1, clean.shape) * sigma, rng.normal(0, 1, clean.shape) * sigma)


def _rss(bvals, signal, out):
    params = np.column_stack([out[k] for k in model.PARAM_NAMES])
    resid = model.ivim_signal(bvals, *params.T) - signal
    return np.einsum("ij,ij->i", resid, resid)


def test_amplitudes_match_brute_force():
    """The closed-form constrained 2-amplitude least squares beats a dense search of its box."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        d, dstar = rng.uniform(0.2e-3, 3e-3), rng.uniform(1e-3, 40e-3)
        x2 = np.exp(-BVALS * d)
        x1 = x2 * np.exp(-BVALS * dstar)
        y = rng.uniform(100, 800) * (rng.uniform(0, 0.5) * x1 + x2) + rng.normal(0, 30, BVALS.size)
        box = (rng.uniform(50, 400), rng.uniform(500, 900), rng.uniform(0, 0.1), rng.uniform(0.15, 0.4))
        gram = (x1 @ x1, x1 @ x2, x2 @ x2, x1 @ y, x2 @ y)
        s0, f, rss = fit._amplitudes(gram, y @ y, box)
        assert box[0] <= s0 <= box[1] and box[2] <= f <= box[3]
        np.testing.assert_allclose(rss, np.sum((s0 * f * x1 + s0 * (1 - f) * x2 - y) ** 2), rtol=1e-7)
        s_grid, f_grid = np.meshgrid(np.linspace(box[0], box[1], 301), np.linspace(box[2], box[3], 301))
        brute = ((s_grid[..., None] * (f_grid[..., None] * x1 + (1 - f_grid[..., None]) * x2) - y) ** 2).sum(-1)
        assert rss <= brute.min() * (1 + 1e-9)


@pytest.mark.parametrize("approach, bounds_version", [("one-step", "2020"), ("one-step", "2019"), ("two-step", "2020")])
def test_fast_recovers_many_noise_free_voxels(approach, bounds_version):
    rng = np.random.default_rng(11)
    n = 200
    f_max = 0.18 if bounds_version == "2020" else 0.3
    truth = np.column_stack([rng.uniform(200, 1000, n), rng.uniform(0.3e-3, 2.0e-3, n),
                             rng.uniform(0.02, f_max, n), rng.uniform(12e-3, 33e-3, n)])
    if approach == "two-step":   # D is fixed at Dinit: keep D* high enough for Dinit = D
        truth[:, 3] = rng.uniform(20e-3, 33e-3, n)
    out = fit.fit_voxels(BVALS, model.ivim_signal(BVALS, *truth.T), approach, bounds_version, engine="fast")
    for j, name in enumerate(model.PARAM_NAMES):
        np.testing.assert_allclose(out[name], truth[:, j], rtol=1e-3, err_msg=name)


@pytest.mark.parametrize("approach, bounds_version", [("one-step", "2020"), ("two-step", "2020")])
def test_fast_rss_no_worse_than_lmfit_reference(approach, bounds_version):
    _, signal = _noisy(4, snr=30, seed=5)
    fast = fit.fit_voxels(BVALS, signal, approach, bounds_version, engine="fast")
    ref = fit.fit_voxels(BVALS, signal, approach, bounds_version, engine="lmfit", seed=0)
    assert np.all(_rss(BVALS, signal, fast) <= _rss(BVALS, signal, ref) * (1 + 1e-6))


def test_fast_results_do_not_depend_on_chunks_or_jobs():
    _, signal = _noisy(300, snr=20, seed=9)
    runs = [voxelpool.fit_in_chunks(BVALS, signal, jobs=1, chunk_size=c, progress=False) for c in (7, 64, 300)]
    runs.append(voxelpool.fit_in_chunks(BVALS, signal, jobs=2, chunk_size=64, progress=False))
    for other in runs[1:]:
        for name in fit.OUTPUT_NAMES:
            np.testing.assert_array_equal(other[name], runs[0][name], err_msg=name)


def test_fast_path_imports_neither_lmfit_nor_matplotlib():
    code = ("import sys, numpy as np; from ivim_common import fit, model;"
            "b = np.array([5., 50, 200, 600, 800]);"
            "fit.fit_voxels(b, model.ivim_signal(b, 600, 1e-3, 0.1, 20e-3)[None], engine='fast');"
            "print(sorted(m for m in ('lmfit', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_zero_f_refinement_searches_dstar():
    """Where step-2 f is 0 (D* undetermined) the refinement searches D* over the nominal range ±5 %.

    The step-2 D* given here (5e-3) is far from the truth (30e-3): a search within its ±5 % box
    cannot fit the signal, the whole range recovers the truth.
    """
    truth = np.array([500.0, 1e-3, 0.03, 30e-3])
    signal = model.ivim_signal(BVALS, *truth)[None]
    step2 = np.array([[500.0, 1e-3, 0.0, 5e-3]])
    cfg = model.settings("one-step", "2019")
    dinit, s0_1mf = model.initial_estimate(BVALS, signal, cfg["bval_threshold"])
    _, lo, hi, vary = model.nominal_bounds("one-step", "2019", dinit, s0_1mf)
    params, rss = fit._refine(BVALS, signal, np.array([0]), step2, lo, hi, vary)
    np.testing.assert_allclose(params[0], truth, rtol=1e-6)
    assert rss[0] < 1e-12 * (signal ** 2).sum()
    near, _ = fit._refine(BVALS, signal, np.array([0]), step2 + [0, 0, 1e-3, 0], lo, hi, vary)
    assert abs(near[0, 3] - 5e-3) <= 0.05 * 5e-3 + 1e-15     # f > 0: D* stays in its ±5 % box


def test_zero_f_reports_dstar_at_the_middle_of_its_box():
    """No perfusion: f = 0, the signal does not depend on D*, reported at the middle of its box."""
    rng = np.random.default_rng(8)
    signal = model.ivim_signal(BVALS, 600.0, 1.2e-3, 0.0, 20e-3)[None] * (1 + np.linspace(0, 0.02, BVALS.size))
    signal += rng.normal(0, 0.5, signal.shape)
    cfg = model.settings("one-step", "2019")
    dinit, s0_1mf = model.initial_estimate(BVALS, signal, cfg["bval_threshold"])
    _, lo, hi, vary = model.nominal_bounds("one-step", "2019", dinit, s0_1mf)
    params, rss = fit._refine(BVALS, signal, np.array([0]), np.array([[600.0, 1.2e-3, 0.0, 5e-3]]), lo, hi, vary)
    assert params[0, 2] == 0.0
    free = fit._newton(BVALS, signal, params, params * 0.5, params * 2, vary)[1]
    np.testing.assert_allclose(rss, free, rtol=1e-9)   # the same RSS for any D*
    np.testing.assert_allclose(params[0, 3], 0.5 * (0.95 * lo[0, 3] + 1.05 * hi[0, 3]), rtol=1e-12)


def test_only_the_step2_result_and_its_ties_are_refined(monkeypatch):
    """Step 3 refines the step-2 candidate of lowest RSS (and those within STEP2_TIE of it)."""
    _, signal = _noisy(200, snr=15, seed=4)
    seen = {}
    newton, refine = fit._newton, fit._refine

    def spy_newton(bvals, sig, params, lo, hi, vary, **kw):
        out = newton(bvals, sig, params, lo, hi, vary, **kw)
        seen.setdefault("step2", out)      # the first call is step 2
        return out

    def spy_refine(bvals, sig, voxel, step2, lo, hi, vary):
        seen["refined"] = voxel, step2
        return refine(bvals, sig, voxel, step2, lo, hi, vary)

    monkeypatch.setattr(fit, "_newton", spy_newton)
    monkeypatch.setattr(fit, "_refine", spy_refine)
    fit.fit_voxels(BVALS, signal, "one-step", "2019", engine="fast")
    voxel, step2 = seen["refined"]
    resid = model.ivim_signal(BVALS, *step2.T) - signal[voxel]
    rss_refined = np.einsum("ij,ij->i", resid, resid)
    best = np.full(len(signal), np.inf)
    np.minimum.at(best, voxel, rss_refined)
    assert np.all(rss_refined <= best[voxel] * (1 + 2 * fit.STEP2_TIE))
    lowest_step2 = seen["step2"][1].min()
    assert len(seen["step2"][1]) > len(voxel) >= len(signal) > 0 and np.isfinite(lowest_step2)


def test_newton_rows_do_not_depend_on_their_neighbours(monkeypatch):
    """Newton is row-wise: a working set of 7 rows gives the same fits as the default one."""
    _, signal = _noisy(100, snr=20, seed=6)
    default = fit.fit_voxels(BVALS, signal, "one-step", "2020", engine="fast")
    monkeypatch.setattr(fit, "NEWTON_BLOCK", 7)
    small = fit.fit_voxels(BVALS, signal, "one-step", "2020", engine="fast")
    for name in fit.OUTPUT_NAMES:
        np.testing.assert_array_equal(small[name], default[name], err_msg=name)
