"""Parameter recovery on noise-free synthetic voxels, the shared initialisation and the
refinement rules, through the public API where it reaches."""
import numpy as np
import pytest

from conftest import BVALS
from ivim_common import IvimModel, engines, model
from ivim_common.constants import CORE_MAPS
from ivim_common.engines import fast


def fit_maps(signal, approach="one-step", bounds_version="2020", engine="fast", bvals=BVALS, **options):
    return IvimModel(bvals, approach, bounds_version, engine).fit(signal, **options).maps

# Truths (S0, D, Fivim, Dstar) inside each approach's bounds.  For two-step D is fixed at Dinit,
# the slope of ln S on b >= 500: with D* >= 20e-3 the perfusion term there is below 1e-5 of the
# signal, so Dinit = D to better than 1e-4 (checked below).
TRUTHS = {
    ("one-step", "2019"): [[600, 1.0e-3, 0.15, 15e-3], [900, 0.4e-3, 0.30, 30e-3], [300, 2.0e-3, 0.05, 8e-3]],
    ("one-step", "2020"): [[600, 1.0e-3, 0.10, 20e-3], [900, 0.4e-3, 0.18, 40e-3], [300, 1.8e-3, 0.05, 12e-3]],
    ("two-step", "2020"): [[600, 1.0e-3, 0.12, 25e-3], [900, 0.4e-3, 0.25, 33e-3], [300, 1.5e-3, 0.08, 20e-3]],
}


@pytest.mark.parametrize("engine", ["fast", pytest.param("lmfit", marks=pytest.mark.slow)])
@pytest.mark.parametrize("approach, bounds_version", TRUTHS)
def test_noise_free_recovery(approach, bounds_version, engine):
    """The least-squares engines find noise-free truths (the Bayesian one: tests/test_bayes.py)."""
    truth = np.array(TRUTHS[approach, bounds_version], dtype=float)
    signal = model.ivim_signal(BVALS, *truth.T)
    out = fit_maps(signal, approach, bounds_version, engine, seed=0)
    np.testing.assert_array_equal(out["exception"], 0)
    for j, name in enumerate(model.PARAM_NAMES):
        np.testing.assert_allclose(out[name], truth[:, j], rtol=1e-3, err_msg=name)
    np.testing.assert_allclose(out["FivimXDstar"], truth[:, 2] * truth[:, 3], rtol=2e-3)
    np.testing.assert_allclose(out["R2"], 1.0, atol=1e-6)


def test_two_step_truths_have_dinit_equal_to_d():
    truth = np.array(TRUTHS["two-step", "2020"])
    dinit, _ = model.initial_estimate(BVALS, model.ivim_signal(BVALS, *truth.T), 500.0)
    np.testing.assert_allclose(dinit, truth[:, 1], rtol=1e-4)


def test_initial_estimate_on_mono_exponential():
    d = np.array([0.3e-3, 1.0e-3, 3.0e-3, 6.0e-3])  # the last one is clipped to 4.5e-3
    signal = model.ivim_signal(BVALS, 500.0, d, 0.0, 0.0)
    dinit, s0_1mf = model.initial_estimate(BVALS, signal, 400.0)
    np.testing.assert_allclose(dinit, [0.3e-3, 1.0e-3, 3.0e-3, 4.5e-3], rtol=1e-10)
    np.testing.assert_allclose(s0_1mf[:3], 500.0, rtol=1e-10)
    # D clipped, intercept refitted: exp(mean(ln S + 4.5e-3 b)) over b >= 400
    high = BVALS >= 400
    np.testing.assert_allclose(s0_1mf[3], 500.0 * np.exp(np.mean(-1.5e-3 * BVALS[high])), rtol=1e-10)


def test_initial_estimate_without_high_b():
    bvals = np.array([0.0, 50.0, 100.0, 450.0])
    signal = model.ivim_signal(bvals, [500.0, 700.0], 1e-3, 0.1, 20e-3)
    dinit, s0_1mf = model.initial_estimate(bvals, signal, 500.0)
    np.testing.assert_array_equal(dinit, 2.325e-3)
    np.testing.assert_array_equal(s0_1mf, signal.max(axis=1))


@pytest.mark.parametrize("engine", engines.ENGINES)
def test_failed_voxels_get_nan_and_exception(engine):
    signal = model.ivim_signal(BVALS, [600.0] * 4, 1e-3, 0.1, 20e-3)
    signal[0, 2] = np.nan
    signal[1, 5] = np.inf
    signal[2, -1] = -1.0
    out = fit_maps(signal, engine=engine, mask=[True, True, True, False])
    np.testing.assert_array_equal(out["exception"][:3], 1)
    for name in CORE_MAPS[:-1]:
        assert np.isnan(out[name]).all(), name
    assert np.isnan(out["exception"][3])      # outside the mask


def test_initial_estimate_needs_two_distinct_high_b_values():
    bvals = np.array([5.0, 50.0, 200.0, 800.0, 800.0, 800.0])
    signal = model.ivim_signal(bvals, [500.0], 1e-3, 0.1, 20e-3)
    dinit, s0_1mf = model.initial_estimate(bvals, signal, 500.0)
    np.testing.assert_array_equal(dinit, 2.325e-3)
    np.testing.assert_array_equal(s0_1mf, signal.max(axis=1))
    out = fit_maps(signal, bvals=bvals)
    assert np.isfinite([out[k][0] for k in model.PARAM_NAMES]).all() and out["exception"][0] == 0


def test_newton_terms_match_finite_differences():
    """Gradient, JᵀJ and the exact Hessian of ½·RSS against central differences."""
    rng = np.random.default_rng(2)
    b = BVALS
    params = np.array([[700.0, 1.1e-3, 0.12, 18e-3], [400.0, 0.6e-3, 0.3, 30e-3], [900.0, 2e-3, 0.05, 6e-3]])
    signal = model.ivim_signal(b, *params.T) * rng.uniform(0.8, 1.2, (3, b.size))   # large residuals

    def half_rss(p):
        r = model.ivim_signal(b, *p.T) - signal
        return 0.5 * np.einsum("ij,ij->i", r, r)

    def jacobian(p):
        cols = []
        for k in range(4):
            e = np.zeros_like(p)
            e[:, k] = p[:, k] * 1e-6
            cols.append((model.ivim_signal(b, *(p + e).T) - model.ivim_signal(b, *(p - e).T)) / (2 * e[:, [k]]))
        return np.stack(cols, axis=2)

    def newton_terms(p):
        """The kernel's gradient, Gauss-Newton matrix and Hessian of ½·RSS, full matrices."""
        out = []
        for p_v, y_v in zip(p, signal):
            u, w, sig = (np.empty(b.size) for _ in range(3))
            grad, gn, hess = np.empty(4), np.zeros((4, 4)), np.zeros((4, 4))
            fast._signal_terms(b, y_v, p_v, u, w, sig)
            fast._newton_terms(b, y_v, p_v, u, w, sig, grad, gn, hess)
            full = lambda m: np.triu(m) + np.triu(m, 1).T  # noqa: E731
            out.append((grad, full(gn), full(hess)))
        return [np.array(t) for t in zip(*out)]

    grad, gn, hess = newton_terms(params)
    jac = jacobian(params)
    np.testing.assert_allclose(gn, np.einsum("nbi,nbj->nij", jac, jac), rtol=1e-6, atol=0)
    steps = params * 1e-5
    for k in range(4):
        e = np.zeros_like(params)
        e[:, k] = steps[:, k]
        fd_grad = (half_rss(params + e) - half_rss(params - e)) / (2 * steps[:, k])
        np.testing.assert_allclose(grad[:, k], fd_grad, rtol=1e-6)
        grad_p, grad_m = newton_terms(params + e)[0], newton_terms(params - e)[0]
        np.testing.assert_allclose(hess[:, :, k], (grad_p - grad_m) / (2 * steps[:, [k]]), rtol=1e-5)
    assert not np.allclose(hess, gn, rtol=1e-3)     # the residual term matters here


@pytest.mark.parametrize("engine", engines.ENGINES)
def test_non_finite_fit_results_are_failures(engine, monkeypatch):
    """An engine returning NaN/Inf for a voxel marks it failed; the other voxels are kept."""
    truth = np.array([[600.0, 1e-3, 0.1, 20e-3], [500.0, 0.8e-3, 0.15, 25e-3]])
    broken = truth.copy()
    broken[1, 3] = np.inf
    monkeypatch.setattr(engines.get(engine), "fit", lambda *args, **options: {"params": broken.copy()})
    out = fit_maps(model.ivim_signal(BVALS, *truth.T), engine=engine)
    np.testing.assert_array_equal(out["exception"], [0, 1])
    assert np.isnan([out[k][1] for k in CORE_MAPS if k != "exception"]).all()
    np.testing.assert_allclose([out[k][0] for k in model.PARAM_NAMES], truth[0])
    assert np.isfinite(out["AIC"][0]) and out["R2"][0] > 0.999


def test_refinement_box_rules():
    """±5 % around each varied step-2 value; where f is 0: f in [0, 0.05] and D* over its nominal
    range ±5 %; fixed parameters keep their value."""
    step2 = np.array([[600.0, 1e-3, 0.1, 20e-3], [500.0, 2e-3, 0.0, 8e-3]])
    lo = np.array([[400.0, 1e-3, 0.0, 2e-3]] * 2)
    hi = np.array([[900.0, 1e-3, 0.35, 35.5e-3]] * 2)
    vary = np.array([True, False, True, True])
    r_lo, r_hi = model.refinement_bounds(step2, vary, lo, hi)
    np.testing.assert_allclose(r_lo[0], [570.0, 1e-3, 0.095, 19e-3])
    np.testing.assert_allclose(r_hi[0], [630.0, 1e-3, 0.105, 21e-3])
    np.testing.assert_allclose(r_lo[1], [475.0, 2e-3, 0.0, 0.95 * 2e-3])
    np.testing.assert_allclose(r_hi[1], [525.0, 2e-3, 0.05, 1.05 * 35.5e-3])
    settled = model.settle_undetermined_dstar(step2.copy(), r_lo, r_hi)
    np.testing.assert_array_equal(settled[0], step2[0])
    assert settled[1, 3] == pytest.approx(0.5 * (0.95 * 2e-3 + 1.05 * 35.5e-3))


def test_reference_engine_refines_in_the_model_box(monkeypatch):
    """The lmfit reference takes its step-3 box from model.refinement_bounds (where step-2 f is 0:
    D* over its nominal range ±5 %) and settles an undetermined D* as the fast engine does."""
    from ivim_common.engines import lmfit_reference

    boxes = []

    def fake_minimize(bvals, signal, start, lo, hi, vary, seed):
        boxes.append((lo.copy(), hi.copy()))
        return np.array([600.0, 1e-3, 0.0, 20e-3])      # f = 0 at both steps

    monkeypatch.setattr(lmfit_reference, "_minimize", fake_minimize)
    init = np.array([[700.0, 1e-3, 0.1, 10e-3]])
    lo, hi = np.array([[400.0, 0.15e-3, 0.0, 2e-3]]), np.array([[1000.0, 1.2e-3, 0.2, 50e-3]])
    vary = np.ones(4, dtype=bool)
    params = lmfit_reference.fit(BVALS, np.ones((1, BVALS.size)), init, lo, hi, vary, np.zeros((1, 2)))["params"]
    np.testing.assert_allclose([boxes[1][0][3], boxes[1][1][3]], [0.95 * 2e-3, 1.05 * 50e-3])
    assert params[0, 3] == pytest.approx(0.5 * (0.95 * 2e-3 + 1.05 * 50e-3))


@pytest.mark.parametrize("engine", ["fast", pytest.param("lmfit", marks=pytest.mark.slow)])
def test_segmented_recovers_noise_free_truths_with_every_engine(engine):
    """Segmented: D from the line on b >= 200, f = 1 - S0(1-f)/S(lowest b), then D* alone; on
    noise-free voxels with b = 0 and D* well above D (the line sees no perfusion), the truth."""
    bvals = np.array([0, 10, 20, 30, 50, 80, 120, 200, 400, 600, 800], dtype=float)
    truth = np.array([[800.0, 1.0e-3, 0.10, 60e-3], [500.0, 1.6e-3, 0.25, 40e-3], [650.0, 0.6e-3, 0.05, 80e-3]])
    fit = IvimModel(bvals, "segmented", engine=engine).fit(model.ivim_signal(bvals, *truth.T))
    dinit, s0_1mf = model.initial_estimate(bvals, model.ivim_signal(bvals, *truth.T), 200.0)
    np.testing.assert_allclose(fit.D, dinit, rtol=1e-12)             # D is the line's
    np.testing.assert_allclose(fit.f, 1 - s0_1mf / truth[:, 0], rtol=1e-12)
    np.testing.assert_allclose(fit.S0, truth[:, 0], rtol=1e-12)       # the signal at b = 0
    np.testing.assert_allclose(fit.D, truth[:, 1], rtol=2e-3)
    np.testing.assert_allclose(fit.f, truth[:, 2], rtol=2e-2)
    np.testing.assert_allclose(fit.D + fit.Dstar, truth[:, 1] + truth[:, 3], rtol=0.05)


def test_approaches_an_engine_or_the_b_values_cannot_serve_are_refused(tmp_path, capsys):
    """The Bayesian engine integrates S0 out, so it cannot hold it as segmented does; two-step and
    segmented hold D at the initialisation line's, which needs 2 distinct b-values above its
    threshold: one-line errors, from the API and the script."""
    import ivim_fitting
    from conftest import write_dataset

    with pytest.raises(ValueError, match="--engine bayes cannot fit -mo segmented"):
        IvimModel(BVALS, "segmented", engine="bayes")
    sparse = np.array([0, 10, 20, 50, 100, 150, 800], dtype=float)
    for approach in ("two-step", "segmented"):
        with pytest.raises(ValueError, match=f"{approach} takes D from the line of ln S on b >= "):
            IvimModel(sparse, approach)
    IvimModel(sparse, "segmented", bval_threshold=150)                # two b-values from 150: fine
    IvimModel(sparse)                                                  # one-step: a default start
    data = write_dataset(tmp_path / "data", mask_voxels=1)
    for extra, code, text in ((["-mo", "segmented", "--engine", "bayes"], 2, "cannot fit -mo segmented"),
                              (["-mo", "two-step", "--b-threshold", "750"], 1, "needs 2 distinct b-values")):
        argv = ["-i", data["dwi"], "-b", data["bval"], "-o", tmp_path / "out", *extra]
        try:
            result = ivim_fitting.main([str(a) for a in argv])
        except SystemExit as exc:
            result = exc.code
        err = capsys.readouterr().err
        assert result == code and err.count("\n") == 1 and text in err, err
        assert not (tmp_path / "out").exists()


def test_segmented_threshold_and_usage():
    bvals = np.array([0, 10, 20, 50, 100, 200, 300, 500, 800], dtype=float)
    signal = model.ivim_signal(bvals, 700.0, 1.2e-3, 0.12, 30e-3)
    low = IvimModel(bvals, "segmented").fit(signal)
    high = IvimModel(bvals, "segmented", bval_threshold=500).fit(signal)
    assert high.D == pytest.approx(model.initial_estimate(bvals, signal[None], 500.0)[0][0], rel=1e-12)
    assert low.D != pytest.approx(high.D, rel=1e-6)
    with pytest.raises(ValueError, match="S0 and f are held in segmented"):
        IvimModel(bvals, "segmented", bounds={"f": (0, 0.3)})
    out = IvimModel(bvals, "segmented").fit(signal, model_choice="aicc").maps
    assert np.isnan(out["Fivim_sd"]) and np.isnan(out["D_sd"]) and np.isfinite(out["Dstar_sd"])
