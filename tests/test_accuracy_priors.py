"""The Bayesian engine's priors (issue 23): the scale-free prior in wide boxes, its intervals, the
spatial prior on a seeded structured phantom, and the refusals."""
import nibabel as nib
import numpy as np
import pytest

import ivim_fitting
from ivim_common import IvimModel, model, spatial

BVALS = np.array([0, 5, 10, 20, 30, 50, 75, 150, 250, 600, 700, 800], dtype=float)


def wide_box_voxels(n, seed, snr=30):
    """Issue 23's phantom: truth (n, 3: f, D, D*p) and Rician signal, S0 = 1000."""
    rng = np.random.default_rng(seed)
    d, f, excess = rng.uniform(0.5e-3, 2.0e-3, n), rng.uniform(0.03, 0.18, n), rng.uniform(10e-3, 40e-3, n)
    clean = model.ivim_signal(BVALS, 1000.0, d, f, excess)
    noisy = np.hypot(clean + rng.normal(0, 1000.0 / snr, clean.shape), rng.normal(0, 1000.0 / snr, clean.shape))
    return np.column_stack([f, d, d + excess]), noisy


def osipi_fit(signal, **options):
    return IvimModel(BVALS, bounds_version="osipi", engine="bayes", dstar_convention="osipi", **options).fit(signal)


def rel_errors(fit, truth):
    """Median |relative error| of f, D, D*p."""
    est = np.column_stack([fit.f, fit.D, fit.Dstar])
    return np.median(np.abs(est - truth) / truth, axis=0)


def test_scale_free_prior_recovers_dstar_in_the_osipi_box():
    """SNR 30, the osipi box (D*p 0.005-0.2): the uniform prior's D*p sits mid-box (error > 1),
    the default (uniform in log D*p, posterior median) is under 0.5 and under least squares'."""
    truth, signal = wide_box_voxels(600, seed=1)
    new = rel_errors(osipi_fit(signal), truth)
    old = rel_errors(osipi_fit(signal, prior="uniform"), truth)
    ls = IvimModel(BVALS, bounds_version="osipi", dstar_convention="osipi").fit(signal)
    ls = rel_errors(ls, truth)
    assert old[2] > 1.2 and new[2] < 0.5
    assert (new <= [0.85 * ls[0], ls[1], 0.8 * ls[2]]).all(), (new, ls)


def test_auto_is_the_uniform_prior_in_the_toolbox_presets():
    """In the 2020 box auto is the uniform prior (posterior mean): the same maps to the bit."""
    truth, signal = wide_box_voxels(50, seed=2)
    mdl = IvimModel(BVALS, engine="bayes")
    auto = mdl.fit(signal)
    assert mdl.engine_record["point_estimate"] == "mean" and "log" not in mdl.engine_record["prior_description"]
    uniform = IvimModel(BVALS, engine="bayes", prior="uniform").fit(signal)
    for name in ("S0", "D", "Fivim", "Dstar", "Dstar_ci_low", "Fivim_sd"):
        np.testing.assert_array_equal(auto.maps[name], uniform.maps[name])


def test_intervals_of_the_scale_free_prior_cover_the_truth():
    """The osipi box, SNR 30, 600 voxels: the 95 % intervals of f, D and D*p cover the truth in
    90-99 % of the voxels."""
    truth, signal = wide_box_voxels(600, seed=3)
    fit = osipi_fit(signal, prior="log")
    for name, t in zip(("Fivim", "D", "Dstar"), truth.T):
        covered = np.mean((fit.maps[f"{name}_ci_low"] <= t) & (t <= fit.maps[f"{name}_ci_high"]))
        assert 0.90 <= covered <= 0.99, (name, covered)


def two_tissue_volume(seed, snr=20, shape=(16, 16, 2)):
    """Left half (x < 8) f 0.05-0.10 and D 0.7e-3, right half f 0.15-0.25 and D 1.5e-3, f rising
    with y in both, D*p 0.04 (D* = D*p - D); truth (x, y, z, 3: f, D, D*p) and Rician signal."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    right = x >= shape[0] // 2
    t = y / (shape[1] - 1)
    f = np.where(right, 0.15 + 0.10 * t, 0.05 + 0.05 * t)
    d = np.where(right, 1.5e-3, 0.7e-3)
    truth = np.repeat(np.stack([f, d, np.full(f.shape, 0.04)], axis=-1)[:, :, None], shape[2], axis=2)
    clean = model.ivim_signal(BVALS, 1000.0, truth[..., 1], truth[..., 0], truth[..., 2] - truth[..., 1])
    sigma = 1000.0 / snr
    return truth, np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))


def test_spatial_prior_lowers_the_errors_and_keeps_the_edge():
    """SNR 20: the spatial prior's f and D*p errors at most 0.6x and 0.8x the voxel-wise
    posterior's, D's no higher; the step of D between the two columns at the edge at least 90 %
    of the true step; f still rises with y inside each half (rank correlation > 0.5)."""
    from scipy.stats import spearmanr

    truth, signal = two_tissue_volume(seed=4)
    voxelwise = osipi_fit(signal, prior="log")
    fit = IvimModel(BVALS, bounds_version="osipi", engine="bayes", dstar_convention="osipi",
                    prior="spatial").fit(signal)
    errs = [np.median(np.abs(np.stack([m.f, m.D, m.Dstar], -1) - truth) / truth, axis=(0, 1, 2))
            for m in (voxelwise, fit)]
    assert errs[1][0] <= 0.6 * errs[0][0] and errs[1][2] <= 0.8 * errs[0][2] and errs[1][1] <= errs[0][1], errs
    step = np.median(fit.D[8]) - np.median(fit.D[7])
    assert step >= 0.9 * (1.5e-3 - 0.7e-3), step
    for half in (slice(0, 8), slice(8, 16)):
        assert spearmanr(fit.f[half].ravel(), truth[half][..., 0].ravel()).correlation > 0.5
    for kind in ("sd", "ci_low", "ci_high"):                  # uncertainty maps as voxel-wise
        assert np.isfinite(fit.maps[f"Fivim_{kind}"]).all()
    assert (fit.maps["Fivim_ci_low"] <= fit.f).all() and (fit.f <= fit.maps["Fivim_ci_high"]).all()


def test_spatial_prior_ties_neighbours_where_two_step_holds_d():
    """two-step holds D (no posterior spread): the neighbours still pull on f and D*, so the
    spatial prior's f map is smoother than the voxel-wise posterior's (median step between
    neighbours along y at most 0.9x; the truth's is 0.005), and no division by that zero spread."""
    import warnings

    truth, signal = two_tissue_volume(seed=4)
    voxelwise = IvimModel(BVALS, approach="two-step", engine="bayes").fit(signal)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit = IvimModel(BVALS, approach="two-step", engine="bayes", prior="spatial").fit(signal)
    steps = [np.median(np.abs(np.diff(m.f, axis=1))) for m in (voxelwise, fit)]
    assert steps[1] <= 0.9 * steps[0], steps
    assert np.isfinite(fit.f).all() and np.isfinite(fit.maps["Fivim_ci_high"]).all()


def test_neighbours_of_a_masked_volume():
    mask = np.zeros((3, 3, 2), bool)
    mask[1, 1, 0] = mask[1, 2, 0] = mask[1, 1, 1] = mask[0, 0, 0] = True
    ids = np.flatnonzero(mask)                   # rows: (0,0,0), (1,1,0), (1,1,1), (1,2,0)
    nbr = spatial.neighbours(mask.shape, ids)
    assert sorted(nbr[1][nbr[1] >= 0].tolist()) == [2, 3]
    assert (nbr[0] == -1).all()
    assert nbr[2][nbr[2] >= 0].tolist() == [1] and nbr[3][nbr[3] >= 0].tolist() == [1]
    assert spatial.neighbours((4,), np.arange(4)).tolist()[0] == [1, -1, -1, -1, -1, -1]


def test_spatial_prior_refusals():
    truth, signal = two_tissue_volume(seed=5, shape=(4, 4, 1))
    mdl = IvimModel(BVALS, engine="bayes", prior="spatial")
    with pytest.raises(ValueError, match="^--prior spatial needs a volume and its mask"):
        mdl.fit_voxels(signal.reshape(-1, BVALS.size))
    one = np.zeros(signal.shape[:-1], bool)
    one[1, 1, 0] = True
    with pytest.raises(ValueError, match="^--prior spatial needs at least 2 voxels in the mask, got 1$"):
        mdl.fit(signal, one)
    with pytest.raises(ValueError, match="takes no options"):
        IvimModel(BVALS, engine="fast", prior="spatial")
    with pytest.raises(ValueError, match="--bootstrap does not apply"):
        mdl.fit(signal, bootstrap=10)


def test_cli_spatial_prior_bad_inputs_exit_2(tmp_path, capsys):
    truth, signal = two_tissue_volume(seed=6, shape=(4, 4, 1))
    nib.save(nib.Nifti1Image(signal.astype(np.float32), np.eye(4)), tmp_path / "dwi.nii.gz")
    np.savetxt(tmp_path / "dwi.bval", BVALS[None], fmt="%g")
    one = np.zeros(signal.shape[:-1], np.uint8)
    one[1, 1, 0] = 1
    nib.save(nib.Nifti1Image(one, np.eye(4)), tmp_path / "one.nii.gz")
    base = ["-i", tmp_path / "dwi.nii.gz", "-o", tmp_path / "out", "-v", "0", "-j", "1", "--prior", "spatial"]
    for extra, text in (([], "--prior spatial needs at least 2 voxels in the mask, got 1"),
                        (["--engine", "fast"], "--prior applies to --engine bayes"),
                        (["--engine", "bayes", "--bootstrap", "5"], "--bootstrap does not apply to --prior spatial")):
        try:
            code = ivim_fitting.main([str(a) for a in base + ["-ma", tmp_path / "one.nii.gz"] + extra
                                      + (["--engine", "bayes"] if not extra else [])])
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and text in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists()
    assert ivim_fitting.main([str(a) for a in base + ["--engine", "bayes"]]) == 0
    assert nib.load(tmp_path / "out" / "Fivim_map.nii.gz").shape == (4, 4, 1)


def test_point_estimates_are_rows_of_the_posterior():
    """Median and mode lie inside the 95 % interval; fit's estimate picks them (D* as D*p's
    less D's, so that the osipi map is D*p's own median)."""
    from ivim_common.engines import bayes

    truth, signal = wide_box_voxels(40, seed=7, snr=50)
    init, lo, hi, vary = model.voxel_bounds(BVALS, signal, "one-step", "2020")
    lo_b, hi_b = bayes.prior_box(lo, hi, bayes.uniform_prior())
    summ = bayes.posterior_summaries(BVALS, signal, lo_b, hi_b, bayes.uniform_prior())
    for row in (4, 5):
        inside = (summ[:, 2, 1:] <= summ[:, row, 1:] + 1e-12) & (summ[:, row, 1:] <= summ[:, 3, 1:] + 1e-12)
        assert inside[:, [0, 1, 3]].all()             # D, f, D*p
    np.testing.assert_allclose(summ[:, 4, 3], summ[:, 4, 4] - summ[:, 4, 1])
    for estimate, row in bayes.ESTIMATES.items():
        p = bayes.fit(BVALS, signal, init, lo, hi, vary, None, estimate=estimate)["params"]
        np.testing.assert_array_equal(p[:, :3], summ[:, row, :3])
