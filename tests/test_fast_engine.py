"""The fast engine: its kernels, agreement with the lmfit reference, determinism."""
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import BVALS
from ivim_common import IvimModel, compiled, model
from ivim_common.constants import CORE_MAPS
from ivim_common.engines import fast


def fit_maps(signal, approach="one-step", bounds_version="2020", engine="fast", **options):
    """The maps of the public API's fit of rows of signal, as a dict of 1-D arrays."""
    return IvimModel(BVALS, approach, bounds_version, engine).fit(signal, **options).maps


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
        s0, f, rss, face = fast._amplitudes(x1 @ x1, x1 @ x2, x2 @ x2, x1 @ y, x2 @ y, y @ y, *box)
        assert box[0] <= s0 <= box[1] and box[2] <= f <= box[3]
        np.testing.assert_allclose(rss, np.sum((s0 * f * x1 + s0 * (1 - f) * x2 - y) ** 2), rtol=1e-7)
        s_grid, f_grid = np.meshgrid(np.linspace(box[0], box[1], 301), np.linspace(box[2], box[3], 301))
        brute = ((s_grid[..., None] * (f_grid[..., None] * x1 + (1 - f_grid[..., None]) * x2) - y) ** 2).sum(-1)
        assert rss <= brute.min() * (1 + 1e-9)
        assert rss <= face <= brute[-1].min() * (1 + 1e-9)      # the best with f = f_max
        rows, faces = np.empty(1), np.empty(1)                  # the grid's SIMD version
        fast._grid_row(np.array([x1 @ x1]), np.array([x1 @ x2]), x2 @ x2, np.array([x1 @ y]), x2 @ y, y @ y,
                      *box, rows, faces)
        np.testing.assert_allclose([rows[0], faces[0]], [rss, face], rtol=1e-12)


def test_kernel_exp_is_numpy_exp():
    """The engine's vectorisable exp: within 1 ulp of numpy's, clamped at ±708, NaN kept."""
    rng = np.random.default_rng(2)
    x = np.concatenate([-rng.uniform(0, 708, 200_000), rng.uniform(0, 5, 1000), -rng.uniform(0, 1e-6, 1000),
                        [0.0, -0.0, 1e-300, -1e-300, -708.0, 708.0, -745.0, 710.0]])
    got = np.array([compiled.exp(v) for v in x])
    ulps = np.abs(got.view(np.int64) - np.exp(np.clip(x, -708, 708)).view(np.int64))  # positive floats
    assert ulps.max() <= 1
    assert np.isnan(compiled.exp(np.nan))


def test_kernel_signal_is_the_model_signal():
    rng = np.random.default_rng(1)
    u, w, sig = (np.empty(BVALS.size) for _ in range(3))
    for _ in range(10):
        p = np.array([rng.uniform(100, 900), rng.uniform(0.2e-3, 3e-3), rng.uniform(0, 0.4), rng.uniform(1e-3, 50e-3)])
        y = model.ivim_signal(BVALS, *p) * rng.uniform(0.9, 1.1, BVALS.size)
        rss = fast._signal_terms(BVALS, y, p, u, w, sig)
        np.testing.assert_allclose(sig, model.ivim_signal(BVALS, *p), rtol=1e-13)
        np.testing.assert_allclose(rss, np.sum((sig - y) ** 2), rtol=1e-13)
        q = p.copy()
        rss = fast._project(BVALS, y, q, p * 0 + [1, 0, 0, 0], p * 0 + [1e4, 1, 1, 1], u, w, sig)
        np.testing.assert_allclose(sig, model.ivim_signal(BVALS, *q), rtol=1e-13)
        np.testing.assert_allclose(rss, np.sum((sig - y) ** 2), rtol=1e-13)


@pytest.mark.parametrize("approach, bounds_version", [("one-step", "2020"), ("one-step", "2019"), ("two-step", "2020")])
def test_fast_recovers_many_noise_free_voxels(approach, bounds_version):
    rng = np.random.default_rng(11)
    n = 200
    f_max = 0.18 if bounds_version == "2020" else 0.3
    truth = np.column_stack([rng.uniform(200, 1000, n), rng.uniform(0.3e-3, 2.0e-3, n),
                             rng.uniform(0.02, f_max, n), rng.uniform(12e-3, 33e-3, n)])
    if approach == "two-step":   # D is fixed at Dinit: keep D* high enough for Dinit = D
        truth[:, 3] = rng.uniform(20e-3, 33e-3, n)
    out = fit_maps(model.ivim_signal(BVALS, *truth.T), approach, bounds_version)
    for j, name in enumerate(model.PARAM_NAMES):
        np.testing.assert_allclose(out[name], truth[:, j], rtol=1e-3, err_msg=name)


@pytest.mark.parametrize("approach, bounds_version", [("one-step", "2020"), ("two-step", "2020")])
def test_fast_rss_no_worse_than_lmfit_reference(approach, bounds_version):
    _, signal = _noisy(4, snr=30, seed=5)
    compiled = fit_maps(signal, approach, bounds_version)
    ref = fit_maps(signal, approach, bounds_version, engine="lmfit", seed=0)
    assert np.all(_rss(BVALS, signal, compiled) <= _rss(BVALS, signal, ref) * (1 + 1e-6))


def test_fast_results_do_not_depend_on_chunks_or_jobs():
    _, signal = _noisy(300, snr=20, seed=9)
    runs = [fit_maps(signal, jobs=1, chunk_size=c) for c in (7, 64, 300)]
    runs.append(fit_maps(signal, jobs=2, chunk_size=64))
    for other in runs[1:]:
        for name in CORE_MAPS:
            np.testing.assert_array_equal(other[name], runs[0][name], err_msg=name)


def test_fast_path_imports_neither_lmfit_nor_matplotlib():
    code = ("import sys, numpy as np; from ivim_common import IvimModel, model;"
            "b = np.array([5., 50, 200, 600, 800]);"
            "IvimModel(b).fit(model.ivim_signal(b, 600, 1e-3, 0.1, 20e-3));"
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
    params, rss = _refine(signal[0], step2[0], lo[0], hi[0], vary)
    np.testing.assert_allclose(params, truth, rtol=1e-6)
    assert rss < 1e-12 * (signal ** 2).sum()
    near, _ = _refine(signal[0], step2[0] + [0, 0, 1e-3, 0], lo[0], hi[0], vary)
    assert abs(near[3] - 5e-3) <= 0.05 * 5e-3 + 1e-15     # f > 0: D* stays in its ±5 % box


def test_zero_f_reports_dstar_at_the_middle_of_its_box():
    """No perfusion: f = 0, the signal does not depend on D*, reported at the middle of its box."""
    rng = np.random.default_rng(8)
    signal = model.ivim_signal(BVALS, 600.0, 1.2e-3, 0.0, 20e-3)[None] * (1 + np.linspace(0, 0.02, BVALS.size))
    signal += rng.normal(0, 0.5, signal.shape)
    cfg = model.settings("one-step", "2019")
    dinit, s0_1mf = model.initial_estimate(BVALS, signal, cfg["bval_threshold"])
    _, lo, hi, vary = model.nominal_bounds("one-step", "2019", dinit, s0_1mf)
    params, rss = _refine(signal[0], np.array([600.0, 1.2e-3, 0.0, 5e-3]), lo[0], hi[0], vary)
    assert params[2] == 0.0
    free = fast._newton(BVALS, signal[0], params.copy(), params * 0.5, params * 2, vary, fast._scratch(BVALS.size, *fast._grid_positions(vary)))
    np.testing.assert_allclose(rss, free, rtol=1e-9)   # the same RSS for any D*
    np.testing.assert_allclose(params[3], 0.5 * (0.95 * lo[0, 3] + 1.05 * hi[0, 3]), rtol=1e-12)


def test_the_fit_lies_in_the_refinement_box_of_a_best_step2_candidate():
    """Step 3 refines the step-2 candidate of lowest RSS (or one within STEP2_TIE of it): the
    final parameters lie in that candidate's ±5 % box and are no worse than it."""
    _, signal = _noisy(100, snr=15, seed=4)
    cfg = model.settings("one-step", "2019")
    dinit, s0_1mf = model.initial_estimate(BVALS, signal, cfg["bval_threshold"])
    _, lo, hi, vary = model.nominal_bounds("one-step", "2019", dinit, s0_1mf)
    final = fast.fit_fast(BVALS, signal, lo, hi, vary)
    every = np.arange(len(signal))
    cand, rss2 = np.empty((len(signal), 4, 4)), np.empty((len(signal), 4))
    t_d, t_s = fast._grid_positions(vary)
    fast._solve_all(BVALS, np.ascontiguousarray(signal), every, lo, hi, vary, every >= 0, t_d, t_s,
                    fast._scratch(BVALS.size, t_d, t_s), cand, rss2)
    n_distinct = 0
    for v in every:
        n_distinct += np.isfinite(rss2[v]).sum()
        tied = np.flatnonzero(rss2[v] <= rss2[v].min() * (1 + fast.STEP2_TIE))
        r_lo, r_hi = model.refinement_bounds(cand[v, tied], vary, lo[[v] * len(tied)], hi[[v] * len(tied)])
        inside = np.all((final[v] >= r_lo * (1 - 1e-12)) & (final[v] <= r_hi * (1 + 1e-12)), axis=1)
        assert inside.any(), v
        resid = model.ivim_signal(BVALS, *final[v]) - signal[v]
        assert resid @ resid <= rss2[v].min() * (1 + 1e-12)
    assert n_distinct > len(signal)          # several distinct step-2 candidates were polished


def _refine(signal, step2, lo, hi, vary):
    """Step 3 of one voxel from a single step-2 candidate: the refined parameters and RSS."""
    t_d, t_s = fast._grid_positions(vary)
    cand = np.repeat(step2[None, None], 4, axis=1)
    rss2 = np.array([[1.0, np.inf, np.inf, np.inf]])      # the others: repeats of the first
    params = fast._step3(BVALS, signal[None], cand, rss2, lo[None], hi[None], vary, t_d, t_s,
                        fast._scratch(BVALS.size, t_d, t_s))[0]
    resid = model.ivim_signal(BVALS, *params) - signal
    return params, resid @ resid


def test_a_slow_compile_is_announced_once_it_takes_long(monkeypatch, capsys):
    """The first run of an installation compiles the engine (some 3-6 s): prepare() says so on
    stderr once that has taken COMPILE_NOTICE_AFTER_S; a quick load, or announce off, says
    nothing, and a prepared engine is not prepared again in the same process."""
    _, signal = _noisy(3, snr=50, seed=0)
    fast.prepare(announce=False)                  # compiled or loaded: quick from now on
    real = fast.fit_fast

    def slow(*args, **kwargs):
        time.sleep(0.4)
        return real(*args, **kwargs)

    monkeypatch.setattr(compiled, "COMPILE_NOTICE_AFTER_S", 0.1)
    monkeypatch.setattr(fast, "_ready", False)    # as in a fresh process
    fit_maps(signal, progress=True)
    assert fast.COMPILE_NOTICE not in capsys.readouterr().err
    monkeypatch.setattr(fast, "fit_fast", slow)
    monkeypatch.setattr(fast, "_ready", False)
    fit_maps(signal, progress=False)
    assert fast.COMPILE_NOTICE not in capsys.readouterr().err
    monkeypatch.setattr(fast, "_ready", False)
    fit_maps(signal, progress=True)
    assert capsys.readouterr().err.count(fast.COMPILE_NOTICE) == 1
    fit_maps(signal, progress=True)               # prepared: once per process
    assert fast.COMPILE_NOTICE not in capsys.readouterr().err


def test_each_kernel_compiles_one_specialisation():
    """The kernels get the array layouts they were compiled for: in a fresh process, fitting
    voxels with several refinement jobs each (noisy ties, zero f) after prepare() adds no
    second specialisation of any kernel (the trust maps' included)."""
    code = """if True:
        import numpy as np
        from ivim_common import IvimModel, model
        from ivim_common.engines import fast
        b = np.array([5., 10, 20, 30, 50, 75, 150, 250, 600, 700, 800])
        fast.prepare(announce=False)
        rng = np.random.default_rng(3)
        noisy = model.ivim_signal(b, 600.0, 1e-3, rng.uniform(0, 0.2, 200), 20e-3) + rng.normal(0, 30, (200, b.size))
        flat = model.ivim_signal(b, 600.0, 1.2e-3, 0.0, 20e-3) * (1 + np.linspace(0, 0.02, b.size))
        IvimModel(b, bounds_version="2019").fit(np.vstack([np.abs(noisy), flat, flat]))
        from ivim_common import kernels as trust
        kernels = [k for mod in (fast, trust) for k in vars(mod).values() if hasattr(k, "signatures")]
        print(len(kernels), sorted(k.__name__ for k in kernels if len(k.signatures) > 1))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n_kernels, multiple = out.stdout.split(" ", 1)
    assert int(n_kernels) > 10 and multiple.strip() == "[]", out.stdout
