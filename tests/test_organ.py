"""Beyond the spinal cord: presets and user bounds, the OSIPI D* convention, several directions,
BIDS derivatives and the OSIPI code collection's own test signals (issue 14)."""
import argparse
import json
import os

import nibabel as nib
import numpy as np
import pytest

import ivim_fitting
from ivim_common import IvimFit, IvimModel, cli, io, model, simulation, viewer
from ivim_common.errors import InputError
from osipi_checks import NARROW, NARROW_BOX, OSIPI_FILES, check_tissue, fit_osipi_file, load

OSIPI = ["--bounds-version", "osipi", "--dstar-convention", "osipi"]
LIVER_B = np.array([0, 10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400, 500, 600, 800], dtype=float)


def call_main(argv, capsys):
    """Run ivim_fitting.main in this process; returns (exit code, stderr)."""
    try:
        code = ivim_fitting.main([str(a) for a in argv] + ["-v", "0", "-j", "1"])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    return code, capsys.readouterr().err


def maps_of(folder, names=("S0", "D", "Fivim", "Dstar", "FivimXDstar")):
    return {k: nib.load(os.path.join(folder, f"{k}_map.nii.gz")).get_fdata() for k in names}


# --------------------------------------------------------------------------- bounds and presets

@pytest.mark.parametrize("text, expected", [
    ("f=0:0.6,Dstar=0.005:0.3,D=0.1e-3:3e-3",
     {"Fivim": (0.0, 0.6, None), "Dstar": (0.005, 0.3, None), "D": (0.1e-3, 3e-3, None)}),
    ("S0=0.5:2:1", {"S0": (0.5, 2.0, 1.0)}),
])
def test_bounds_spec_reads(text, expected):
    assert cli.bounds_spec(text) == expected


@pytest.mark.parametrize("text, message", [
    ("g=0:1", "unknown parameter"), ("f=0.3:0.2", "lower <= upper"), ("f=0.1:0.2:0.3", "outside its bounds"),
    ("f=0:0.2,f=0:0.3", "given twice"), ("f=0:1.5", "fraction"), ("D=a:b", "cannot read"), ("D=1", "cannot read"),
])
def test_bounds_spec_refuses(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        cli.bounds_spec(text)


def test_bounds_usage_errors_exit_2(tmp_path, capsys):
    from conftest import write_dataset
    data = write_dataset(tmp_path / "data")
    base = ["-i", data["dwi"], "-b", data["bval"], "-o", tmp_path / "out"]
    for extra, message in ((["--bounds", "f=0.3:0.2"], "lower <= upper"),
                           (["--bounds", "Dstar=0.001:0.002,D=0.003:0.004", "--dstar-convention", "osipi"],
                            "must exceed D"),
                           (["-mo", "two-step", "--bounds", "D=0.001:0.002"], "fixed")):
        code, err = call_main(base + extra, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_osipi_preset_bounds():
    """OSIPI's defaults: S0 [0.7, 1.3]×S(lowest b), f [0, 1], D [0, 5e-3] (floored), D*p [5e-3, 0.2]."""
    init, lo, hi, vary = model.nominal_bounds("one-step", "osipi", np.array([1e-3]), np.array([900.0]),
                                              s_low=np.array([1000.0]))
    np.testing.assert_allclose(lo[0, :3], [700.0, model.DIFFUSIVITY_FLOOR, 0.0])
    np.testing.assert_allclose(hi[0, :3], [1300.0, 5e-3, 1.0])
    np.testing.assert_allclose([lo[0, 3], hi[0, 3]], [model.DIFFUSIVITY_FLOOR, 0.2 - model.DIFFUSIVITY_FLOOR])
    np.testing.assert_allclose(init[0], [1000.0, 1e-3, 0.1, 9e-3])
    assert vary.all()
    assert model.refinement_limits("one-step", "osipi") == {"pool": model.OSIPI["Dstar"]}
    assert model.refinement_limits("one-step", "2020") is None


def test_refinement_with_limits_stays_inside():
    """Clipped to the box; D + D* kept inside D*p's bounds; outside the ±5 % box: a search."""
    lo = np.array([[0.9, 0.8e-3, 0.2, 0.01 - 1.2e-3]] * 2)
    hi = np.array([[1.1, 1.2e-3, 0.3, 0.02 - 0.8e-3]] * 2)
    step2 = np.array([[1.1, 1.2e-3, 0.3, 0.0192], [1.0, 1.0e-3, 0.25, 0.012]])   # D + D* 0.0204, 0.013
    vary = np.ones(4, dtype=bool)
    r_lo, r_hi = model.refinement_bounds(step2, vary, lo, hi, {"pool": (0.01, 0.02, 0.015)})
    assert (r_lo >= lo - 1e-15).all() and (r_hi <= hi + 1e-15).all() and (r_lo <= r_hi).all()
    assert (r_lo[:, 1] + r_lo[:, 3] >= 0.01 - 1e-12).all() and (r_hi[:, 1] + r_hi[:, 3] <= 0.02 + 1e-12).all()
    np.testing.assert_array_equal(model.needs_search(step2, r_lo, r_hi), [True, False])


def high_perfusion_signal(n=50, snr=200, seed=1):
    """Kidney-like voxels: f 0.3, D 1.9e-3, D*p 0.06 (toolbox D* 0.0581), Rician noise."""
    rng = np.random.default_rng(seed)
    clean = model.ivim_signal(LIVER_B, 1000.0, 1.9e-3, 0.3, 0.06 - 1.9e-3)
    return np.hypot(clean + 1000.0 / snr * rng.standard_normal((n, LIVER_B.size)),
                    1000.0 / snr * rng.standard_normal((n, LIVER_B.size)))


def test_high_perfusion_2020_fails_osipi_and_bounds_recover():
    signal = high_perfusion_signal()
    default = IvimModel(LIVER_B, dstar_convention="osipi").fit(signal)
    assert np.median(default.f) <= 0.21 + 1e-9     # 2020's cap f <= 0.20, and its unclipped +5 % step 3
    for kwargs in ({"bounds_version": "osipi"},
                   {"bounds": {"Fivim": (0, 0.6), "Dstar": (0.005, 0.3), "D": (0.1e-3, 3e-3)}}):
        fit = IvimModel(LIVER_B, dstar_convention="osipi", **kwargs).fit(signal)
        assert np.median(fit.f) == pytest.approx(0.3, rel=0.03)
        assert np.median(fit.D) == pytest.approx(1.9e-3, rel=0.03)
        assert np.median(fit.Dstar) == pytest.approx(0.06, rel=0.05)


@pytest.mark.parametrize("engine", ["fast", pytest.param("lmfit", marks=pytest.mark.slow)])
def test_user_bounds_hold_in_both_conventions(engine):
    """Every result inside the user's bounds (S0 as a factor of the reference), both conventions."""
    signal = high_perfusion_signal(n=4 if engine == "lmfit" else 40, snr=50)
    s_ref = model.lowest_b_signal(LIVER_B, signal)
    for convention in ("toolbox", "osipi"):
        bounds = {"S0": (0.95, 1.02), "Fivim": (0.1, 0.2), "D": (1.0e-3, 1.5e-3), "Dstar": (0.03, 0.04)}
        fit = IvimModel(LIVER_B, "one-step", "osipi", engine, bounds, convention).fit(signal)
        assert (fit.exception == 0).all()
        assert ((fit.S0 >= 0.95 * s_ref * (1 - 1e-12)) & (fit.S0 <= 1.02 * s_ref * (1 + 1e-12))).all()
        for name, (low, high) in (("f", (0.1, 0.2)), ("D", (1e-3, 1.5e-3)), ("Dstar", (0.03, 0.04))):
            values = getattr(fit, name)
            assert ((values >= low * (1 - 1e-9)) & (values <= high * (1 + 1e-9))).all(), (convention, name)


@pytest.mark.parametrize("engine", ["fast", pytest.param("lmfit", marks=pytest.mark.slow)])
def test_every_preset_both_engines(engine):
    """Both engines honour every preset: noise-free voxels inside each preset's range come back."""
    truth = [1000.0, 1.0e-3, 0.12, 25e-3]
    signal = model.ivim_signal(LIVER_B, *truth)[None]
    for version in ("2020", "2019", "osipi"):
        fit = IvimModel(LIVER_B, "one-step", version, engine).fit(signal)
        np.testing.assert_allclose([fit.S0[0], fit.D[0], fit.f[0], fit.Dstar[0]], truth, rtol=0.03)


# --------------------------------------------------------------------------- OSIPI's tests

@pytest.mark.parametrize("name", OSIPI_FILES)
def test_osipi_generic_tolerances(name, tmp_path):
    """--bounds-version osipi --dstar-convention osipi meets the collection's tolerances on every
    tissue, through ivim_fitting.main (the CLI's code path)."""
    tissues, fitted, truth = fit_osipi_file(name, tmp_path, OSIPI)
    failed = {t: v for t, f, tr in zip(tissues, fitted, truth) if "fail" in (v := check_tissue(f, tr)).values()}
    assert not failed


@pytest.mark.parametrize("name", ["generic.json", pytest.param("generic_one.json", marks=pytest.mark.slow)])
def test_osipi_narrow_bounds_respected(name, tmp_path):
    """OSIPI's bounds test: narrow bounds (S0 1.1-1.3, f 0.2-0.3, D*p 0.01-0.02, D 0.8-1.2e-3)."""
    tissues, fitted, _ = fit_osipi_file(name, tmp_path, OSIPI + ["--bounds", NARROW])
    for tissue, fit in zip(tissues, fitted):
        for key, (low, high) in NARROW_BOX.items():
            # the maps are float32: inside up to its rounding (6e-8 relative)
            assert low * (1 - 1e-7) <= fit[key] <= high * (1 + 1e-7), (tissue, key, fit[key])


def test_osipi_data_attributed():
    folder = os.path.join(os.path.dirname(__file__), "data", "osipi")
    assert "Apache License" in open(os.path.join(folder, "LICENSE")).read()
    assert "OSIPI" in open(os.path.join(folder, "README.md")).read()
    assert load("generic.json")[2].shape == (14, 18)


# --------------------------------------------------------------------------- D* convention

def test_dstar_convention_maps_and_sidecar(tmp_path, capsys):
    from conftest import write_dataset
    data = write_dataset(tmp_path / "data")
    base = ["-i", data["dwi"], "-b", data["bval"], "-ma", data["mask"]]
    assert call_main(base + ["-o", tmp_path / "tb"], capsys)[0] == 0
    assert call_main(base + ["-o", tmp_path / "os", "--dstar-convention", "osipi"], capsys)[0] == 0
    tb, os_ = maps_of(tmp_path / "tb"), maps_of(tmp_path / "os")
    np.testing.assert_allclose(os_["Dstar"], tb["Dstar"] + tb["D"], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(os_["FivimXDstar"], tb["Fivim"] * (tb["Dstar"] + tb["D"]), rtol=1e-5, atol=1e-12)
    side = json.loads((tmp_path / "os" / "ivim_fitting.json").read_text())
    assert side["dstar_convention"] == "osipi" and "D + D*" in side["model"]["descriptions"]["Dstar"]
    fit_tb, fit_os = IvimFit.from_folder(tmp_path / "tb"), IvimFit.from_folder(tmp_path / "os")
    assert fit_os.model.dstar_convention == "osipi"
    np.testing.assert_allclose(fit_os.predict(LIVER_B), fit_tb.predict(LIVER_B), rtol=1e-5, equal_nan=True)
    folder = viewer.load_fit_folder(str(tmp_path / "os" / "Dstar_map.nii.gz"))
    assert folder.dstar_convention == "osipi"
    assert "D*p" in viewer.map_display("Dstar", os_["Dstar"], dstar_convention=folder.dstar_convention)[0]


def test_simulation_osipi_convention():
    sim = simulation.Simulation(bvals=LIVER_B, F_range=np.array([0.3]), Dstar_range=np.array([0.06]),
                                D_range=np.array([1.9e-3]), bounds_version="osipi", dstar_convention="osipi")
    errors = simulation.signed_errors(sim, [0])
    assert np.abs(errors).max() < 0.5                           # % (noise-free)
    with pytest.raises(ValueError, match="exceed"):
        simulation.Simulation(bvals=LIVER_B, F_range=np.array([0.1]), Dstar_range=np.array([1e-3]),
                              D_range=np.array([2e-3]), dstar_convention="osipi")


# --------------------------------------------------------------------------- directions

D_DIAG = np.array([1.7e-3, 1.0e-3, 0.4e-3])
SHELLS = [10, 20, 30, 50, 75, 100, 150, 200, 400, 600, 800]


def write_directional(folder, name="dwi", jitter=False):
    """A noise-free 2x2x1 volume: 2 b = 0 and 3 orthogonal directions per shell (b written
    with a scanner's jitter when asked), its .bval and .bvec beside it."""
    os.makedirs(folder, exist_ok=True)
    bvals = np.array([0.0, 0.0] + [b for b in SHELLS for _ in range(3)])
    if jitter:                                                   # 795, 800, 805 and a b = 0.6
        bvals = bvals * (1 + np.tile([0.0, 0.005, -0.005], len(bvals) // 3 + 1)[:len(bvals)])
        bvals[1] = 0.6
    bvecs = np.concatenate([np.zeros((3, 2)), np.tile(np.eye(3), len(SHELLS))], axis=1)
    signal = simulation.directional_signal(bvals, bvecs, 1000.0, D_DIAG, 0.1, 20e-3)
    path = os.path.join(folder, f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(np.tile(signal, (2, 2, 1, 1)).astype(np.float32), np.eye(4)), path)
    np.savetxt(os.path.join(folder, f"{name}.bval"), bvals[None], fmt="%.6g")
    np.savetxt(os.path.join(folder, f"{name}.bvec"), bvecs, fmt="%g")
    return path


def test_b_shells_tolerance():
    np.testing.assert_array_equal(io.b_shells([0, 4, 795, 800, 805, 1000], tolerance=10),
                                  [0, 0, 800, 800, 800, 1000])
    np.testing.assert_array_equal(io.b_shells([0, 2, 795, 800, 805], tolerance="1%"), [0, 2, 797.5, 797.5, 805])
    np.testing.assert_array_equal(io.b_shells([0, 5, 10, 15, 20]), [0, 5, 10, 15, 20])


def test_trace_and_each_recover(tmp_path, capsys):
    dwi = write_directional(tmp_path / "data", jitter=True)
    assert call_main(["-i", dwi, "--directions", "trace", "-o", tmp_path / "trace"], capsys)[0] == 0
    trace = maps_of(tmp_path / "trace")
    np.testing.assert_allclose(trace["D"], D_DIAG.mean(), rtol=0.02)
    np.testing.assert_allclose(trace["Fivim"], 0.1, rtol=0.03)
    np.testing.assert_allclose(trace["Dstar"], 20e-3, rtol=0.05)
    side = json.loads((tmp_path / "trace" / "ivim_fitting.json").read_text())
    assert side["directions"]["mode"] == "trace" and len(side["directions"]["directions"]) == 3
    np.testing.assert_allclose(side["bvals"], [0] + SHELLS, rtol=0.01)
    assert side["inputs"]["bval_source"].startswith("found beside") and side["inputs"]["bvec"]["sha256"]
    assert call_main(["-i", dwi, "--directions", "each", "-o", tmp_path / "each"], capsys)[0] == 0
    for k in range(3):
        d = maps_of(tmp_path / "each" / f"dir{k + 1}", ("D",))["D"]
        np.testing.assert_allclose(d, D_DIAG[k], rtol=0.02)


def test_directions_bad_inputs(tmp_path, capsys):
    dwi = write_directional(tmp_path / "data")
    bvec = tmp_path / "data" / "dwi.bvec"
    good = np.loadtxt(bvec)
    cases = [(good[:, :-1], "vectors but"), (np.where(np.arange(good.shape[1]) == 4, 0.5 * good, good), "non-unit"),
             (np.where(np.arange(good.shape[1]) == 4, 0.0, good), "zero")]
    for vectors, message in cases:
        np.savetxt(tmp_path / "bad.bvec", vectors, fmt="%g")
        code, err = call_main(["-i", dwi, "--bvec", tmp_path / "bad.bvec", "--directions", "trace",
                               "-o", tmp_path / "out"], capsys)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    single = good.copy()
    single[:, 2:5] = np.array([[1.0], [0.0], [0.0]])             # b = 10: one direction only
    np.savetxt(tmp_path / "single.bvec", single, fmt="%g")
    code, err = call_main(["-i", dwi, "--bvec", tmp_path / "single.bvec", "--directions", "trace",
                           "-o", tmp_path / "out"], capsys)
    assert code == 1 and "single direction" in err
    os.remove(bvec)
    code, err = call_main(["-i", dwi, "--directions", "each", "-o", tmp_path / "out"], capsys)
    assert code == 2 and "--bvec" in err
    assert not (tmp_path / "out").exists()


def test_some_directions_only_are_recorded():
    bvals = np.array([0, 100, 100, 100, 500, 500, 800, 800, 800], dtype=float)
    bvecs = np.array([[0, 1, 0, 0, 1, 0, 1, 0, 0], [0, 0, 1, 0, 0, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0, 0, 0, 1]], float)
    data = simulation.directional_signal(bvals, bvecs, 1.0, D_DIAG, 0.1, 20e-3)[None]
    (_, b, combined, record), = io.direction_sets(data, bvals, bvecs, "trace")
    assert record["shells_with_some_directions_only"] == {"500": 2}
    np.testing.assert_allclose(b, [0, 100, 500, 800])
    with pytest.raises(InputError, match="single direction"):          # b = 500 in one direction
        io.direction_sets(data[..., :5], bvals[:5], bvecs[:, :5], "trace")


# --------------------------------------------------------------------------- BIDS

def test_bids_derivatives(tmp_path, capsys):
    src = tmp_path / "rawdata" / "sub-01" / "ses-2" / "dwi"
    dwi = write_directional(src, "sub-01_ses-2_acq-ivim_dwi")
    out = tmp_path / "derivatives" / "ivim"
    code, err = call_main(["-i", dwi, "--directions", "trace", "--bids", "-o", out], capsys)
    assert code == 0, err
    folder = out / "sub-01" / "ses-2" / "dwi"
    stem = "sub-01_ses-2_acq-ivim_model-ivim_param-"
    for param in ("S0", "D", "f", "Dstar", "fDstar", "AIC", "R2", "exception"):
        assert (folder / f"{stem}{param}_dwimap.nii.gz").is_file()
        side = json.loads((folder / f"{stem}{param}_dwimap.json").read_text())
        assert {"Description", "URL", "Parameters"} <= set(side["Model"]) and "Units" in side
    side = json.loads((folder / f"{stem}Dstar_dwimap.json").read_text())
    assert side["Model"]["Parameters"]["DstarConvention"] == "toolbox" and side["Units"] == "mm^2/s"
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "ivim-toolbox"
    assert {"Name", "BIDSVersion"} <= set(description)
    code, err = call_main(["-i", dwi, "--directions", "trace", "--bids", "-o", out], capsys)
    assert code == 1 and "already exists" in err                          # no --force
    code, err = call_main(["-i", dwi, "--directions", "each", "--bids", "-o", out], capsys)
    assert code == 0 and (folder / "sub-01_ses-2_acq-ivim_model-ivim_desc-dir2_param-D_dwimap.nii.gz").is_file()


def test_bids_bad_inputs(tmp_path, capsys):
    dwi = write_directional(tmp_path / "plain")
    code, err = call_main(["-i", dwi, "--bids", "-o", tmp_path / "out"], capsys)
    assert code == 2 and "not BIDS" in err
    bids = write_directional(tmp_path / "sub-02" / "dwi", "sub-02_dwi")
    with open(tmp_path / "sub-02" / "dwi" / "sub-02_dwi.bval", "w") as f:
        f.write("0 100 abc\n")
    code, err = call_main(["-i", bids, "--bids", "-o", tmp_path / "out"], capsys)
    assert code == 1 and "sub-02_dwi.bval" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert io.bids_source("sub-01_ses-2_acq-ivim_dwi.nii.gz") == (["sub-01", "ses-2", "dwi"], "sub-01_ses-2_acq-ivim")
