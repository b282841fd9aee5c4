"""ivim_fitting.py end to end: input checks, outputs, sidecar, --force, -j, Ctrl-C."""
import hashlib
import json
import os
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

import ivim_fitting
from conftest import AFFINE, BVALS, NAN_VOXEL, NONPOS_VOXEL, REPO, run_script, write_dataset

TEST_DATA = os.path.join(REPO, "test_data")
from ivim_common import IvimFit, IvimModel, engines, io, model
from ivim_common.constants import CORE_MAPS
from ivim_common.errors import InputError, OutputExistsError

CLI_ENGINE = "fast"
DEFAULT_MAPS = [*CORE_MAPS, *(f"{p}_sd" for p in model.PARAM_NAMES)]   # a least-squares fit's


def call_main(argv, capsys):
    """Run ivim_fitting.main in this process; returns (exit code, stderr)."""
    try:
        code = ivim_fitting.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    return code, capsys.readouterr().err


def base_args(data, out):
    return ["-i", data["dwi"], "-b", data["bval"], "-ma", data["mask"], "-o", out, "--engine", CLI_ENGINE,
            "-j", 1]


def read_maps(folder):
    """{name: nibabel image} of the 8 maps in an output folder."""
    return {name: nib.load(os.path.join(folder, f"{name}_map.nii.gz")) for name in CORE_MAPS}


# --------------------------------------------------------------------------- bad inputs

def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def _save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _replace(args, flag, value):
    args[args.index(flag) + 1] = value
    return args


BAD_INPUTS = {
    # name: (change of the arguments, expected exit code, text expected in the message)
    "missing DWI": (lambda a, d, t: _replace(a, "-i", t / "nope.nii.gz"), 1, "nope.nii.gz: no such file"),
    "missing b-values": (lambda a, d, t: _replace(a, "-b", t / "nope.bval"), 1, "nope.bval: no such file"),
    "missing mask": (lambda a, d, t: _replace(a, "-ma", t / "nope.nii.gz"), 1, "nope.nii.gz: no such file"),
    "DWI unreadable": (lambda a, d, t: _replace(a, "-i", _write(t / "junk.nii.gz", "not an image")), 1,
                       "junk.nii.gz: not a readable NIfTI"),
    "DWI not NIfTI": (lambda a, d, t: _replace(a, "-i", _mgh(t / "dwi.mgz")), 1, "dwi.mgz: not a NIfTI"),
    "DWI 3-D": (lambda a, d, t: _replace(a, "-i", _save(t / "dwi3d.nii.gz", np.ones((3, 3, 1), np.float32))),
                1, "dwi3d.nii.gz: expected a 4-D image"),
    "b-value count": (lambda a, d, t: _replace(a, "-b", _write(t / "b10.txt", " ".join(["5"] * 10))), 1,
                      "11 volumes but b-value file"),
    "negative b-value": (lambda a, d, t: _replace(a, "-b", _write(t / "bneg.txt", "-5 " + "10 " * 10)), 1,
                         "bneg.txt: negative b-value -5"),
    "non-numeric b-value": (lambda a, d, t: _replace(a, "-b", _write(t / "babc.txt", "abc " + "10 " * 10)), 1,
                            "babc.txt: non-numeric b-value 'abc'"),
    "3 distinct b-values": (lambda a, d, t: _replace(a, "-b", _write(t / "b3.txt", "5 " * 4 + "400 " * 4 + "800 " * 3)),
                            1, "b3.txt: 3 distinct b-values, one-step needs at least 4"),
    "b-value matrix": (lambda a, d, t: _replace(a, "-b", _write(t / "b2d.txt", ("5 " * 11 + "\n") * 2)), 1,
                       "b2d.txt: expected one row or one column"),
    "empty b-value file": (lambda a, d, t: _replace(a, "-b", _write(t / "bnone.txt", "\n")), 1,
                           "bnone.txt: no b-values"),
    "mask shape": (lambda a, d, t: _replace(a, "-ma", _save(t / "m2.nii.gz", np.ones((3, 3, 2), np.int8))), 1,
                   "m2.nii.gz: shape (3, 3, 2) differs"),
    "mask affine": (lambda a, d, t: _replace(a, "-ma", _save(t / "maff.nii.gz", np.ones((3, 3, 1), np.int8),
                                                             np.eye(4))), 1, "maff.nii.gz: affine"),
    "empty mask": (lambda a, d, t: _replace(a, "-ma", _save(t / "m0.nii.gz", np.zeros((3, 3, 1), np.int8))), 1,
                   "m0.nii.gz: empty"),
    "unknown approach": (lambda a, d, t: a + ["-mo", "three-step"], 2, "invalid choice: 'three-step'"),
    "bounds version with two-step": (lambda a, d, t: a + ["-mo", "two-step", "--bounds-version", "2019"], 2,
                                     "--bounds-version applies to -mo one-step only"),
    "negative seed": (lambda a, d, t: a + ["--seed", "-1"], 2, "argument --seed: must be >= 0, got -1"),
    "output is a file": (lambda a, d, t: _replace(a, "-o", _write(t / "afile", "")), 1,
                         "afile exists and is not a folder"),
}


def _mgh(path):
    nib.save(nib.MGHImage(np.ones((3, 3, 1, 11), np.float32), AFFINE), path)
    return path


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_one_line_no_output(case, dataset, tmp_path, capsys):
    change, expected_code, expected_text = BAD_INPUTS[case]
    args = change(base_args(dataset, tmp_path / "out"), dataset, tmp_path)
    before = set(os.listdir(tmp_path))  # the bad files are made by change()
    code, err = call_main(args, capsys)
    assert code == expected_code
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("ivim_fitting.py: error: ")
    assert expected_text in err
    assert set(os.listdir(tmp_path)) == before  # no output folder, no temporary folder


def test_existing_output_refused_untouched(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = call_main(base_args(dataset, out), capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "already exists (use --force" in err
    assert os.listdir(out) == ["notes.txt"]


# --------------------------------------------------------------------------- b-values and selection

@pytest.mark.parametrize("text", ["5 10 20 600\n", "5,10,20,600", "5\t10\t20\t600 \n", "5\n10\n20\n600\n",
                                  "5, 10, 20, 600\n", "  5 10  20 600  \n\n"])
def test_bval_formats(text, tmp_path):
    path = _write(tmp_path / "b.bval", text)
    np.testing.assert_array_equal(io.read_bvals(path), [5, 10, 20, 600])


def test_two_step_needs_3_distinct_b_values(dataset, tmp_path):
    three = _write(tmp_path / "b3.txt", "5 " * 4 + "400 " * 4 + "800 " * 3)
    assert io.load_fit_inputs(dataset["dwi"], three, approach="two-step").bvals.size == 11
    two = _write(tmp_path / "b2.txt", "5 " * 4 + "800 " * 7)
    with pytest.raises(InputError, match="b2.txt: 2 distinct b-values, two-step needs at least 3"):
        io.load_fit_inputs(dataset["dwi"], two, approach="two-step")


def test_no_mask_selects_finite_positive_at_lowest_b(dataset):
    image = nib.load(dataset["dwi"])
    data = image.get_fdata()
    data[0, 0, 0, 0] = -1.0        # non-positive at the lowest b: not selected
    data[0, 1, 0, 0] = np.inf      # non-finite at the lowest b: not selected
    nib.save(nib.Nifti1Image(data, AFFINE), dataset["dwi"])
    inputs = io.load_fit_inputs(dataset["dwi"], dataset["bval"])
    expected = np.ones((3, 3, 1), bool)
    expected[0, 0, 0] = expected[0, 1, 0] = False
    np.testing.assert_array_equal(inputs.selected, expected)  # NAN_VOXEL is selected: NaN at b = 30
    assert inputs.data.shape == (3, 3, 1, BVALS.size)
    assert inputs.records["mask"] is None


def test_no_voxel_selected_is_an_error(dataset):
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 1, BVALS.size), np.float32), AFFINE), dataset["dwi"])
    with pytest.raises(InputError, match="no voxel has a finite, positive signal"):
        io.load_fit_inputs(dataset["dwi"], dataset["bval"])


# --------------------------------------------------------------------------- a successful run

@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """One run on the 6-voxel mask (2 of them with bad samples): (data set, output folder)."""
    tmp = tmp_path_factory.mktemp("run")
    data = write_dataset(tmp / "data")
    out = tmp / "maps"
    assert ivim_fitting.main([str(a) for a in base_args(data, out)] + ["-v", "0"]) == 0
    return data, out


def test_maps_float32_affine_mask_and_failures(fitted_run):
    data, out = fitted_run
    mask = nib.load(data["mask"]).get_fdata() > 0
    failed = np.zeros_like(mask)
    failed[NAN_VOXEL] = failed[NONPOS_VOXEL] = True
    for name, image in read_maps(out).items():
        values = image.get_fdata()
        assert image.get_data_dtype() == np.float32
        assert image.shape == mask.shape
        np.testing.assert_allclose(image.affine, AFFINE, atol=1e-6)
        assert (values[~mask] == 0).all(), name
        if name == "exception":
            np.testing.assert_array_equal(values[mask], failed[mask].astype(float))
        else:
            assert np.isnan(values[failed]).all(), name
            assert np.isfinite(values[mask & ~failed]).all(), name


def test_maps_recover_the_truth(fitted_run):
    data, out = fitted_run
    fitted = nib.load(data["mask"]).get_fdata() > 0
    fitted[NAN_VOXEL] = fitted[NONPOS_VOXEL] = False
    maps = read_maps(out)
    for j, name in enumerate(model.PARAM_NAMES):
        np.testing.assert_allclose(maps[name].get_fdata()[fitted], data["params"][fitted][:, j], rtol=1e-3)


def test_sidecar(fitted_run):
    data, out = fitted_run
    with open(os.path.join(out, "ivim_fitting.json")) as f:
        sidecar = json.load(f)
    for key, path in (("dwi", data["dwi"]), ("bvals", data["bval"]), ("mask", data["mask"])):
        with open(path, "rb") as f:
            assert sidecar["inputs"][key]["sha256"] == hashlib.sha256(f.read()).hexdigest()
        assert sidecar["inputs"][key]["abspath"] == os.path.abspath(path)
    assert sidecar["model"]["equation"] == model.EQUATION
    assert sidecar["model"]["conversion"] == model.CONVERSION
    assert sidecar["counts"] == {"mask_voxels": 6, "fitted": 4, "failed": 2}
    assert sidecar["bvals"] == BVALS.tolist()
    assert (sidecar["approach"], sidecar["bounds_version"], sidecar["engine"], sidecar["seed"]) == \
        ("one-step", "2020", CLI_ENGINE, 0)
    assert sidecar["bounds"] == model.bounds_description("one-step", "2020")
    assert sidecar["maps"] == {name: f"{name}_map.nii.gz" for name in DEFAULT_MAPS}
    assert sidecar["command"].startswith("ivim_fitting.py -i ")
    d_map = read_maps(out)["D"].get_fdata()
    d_fitted = d_map[np.isfinite(d_map) & (d_map != 0)]
    assert sidecar["summary"]["D"]["median"] == pytest.approx(np.median(d_fitted), rel=1e-6)
    assert sidecar["summary"]["D"]["iqr"] == pytest.approx(np.percentile(d_fitted, [25, 75]), rel=1e-6)
    assert sidecar["run_time_s"] > 0


def test_force_replaces_only_toolbox_files(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", mask_voxels=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "S0_map.nii.gz").write_text("stale")
    code, err = call_main(base_args(data, out) + ["--force", "-v", "0"], capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(out)) == sorted(["notes.txt", "ivim_fitting.json"] +
                                             [f"{name}_map.nii.gz" for name in DEFAULT_MAPS])
    assert nib.load(out / "S0_map.nii.gz").get_data_dtype() == np.float32
    assert sorted(os.listdir(tmp_path)) == ["data", "out"]  # no temporary folder left


def test_force_needs_only_a_writable_output_folder(tmp_path, monkeypatch, capsys):
    """--force into a writable folder whose parent is read-only: staged inside the folder."""
    data = write_dataset(tmp_path / "data", mask_voxels=1)
    parent = tmp_path / "read_only"
    out = parent / "out"
    out.mkdir(parents=True)
    access = os.access  # root ignores the mode bits, so the parent is also read-only for os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (os.path.abspath(path) != str(parent)
                                                                and access(path, mode, **kw)))
    parent.chmod(0o555)
    try:
        code, err = call_main(base_args(data, out) + ["--force", "-v", "0"], capsys)
    finally:
        parent.chmod(0o755)
    assert code == 0, err
    assert os.listdir(parent) == ["out"] and len(os.listdir(out)) == len(DEFAULT_MAPS) + 1


def test_failed_forced_run_leaves_the_previous_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "S0_map.nii.gz").write_text("previous")
    path = str(out / "S0_map.nii.gz")
    with pytest.raises(RuntimeError):
        with io.staged_outputs([path]) as tmp:
            assert os.path.dirname(os.path.dirname(tmp[path])) == str(out)  # staged inside the folder
            with open(tmp[path], "w") as f:
                f.write("new")
            raise RuntimeError("a failure before the end")
    assert os.listdir(out) == ["S0_map.nii.gz"] and (out / "S0_map.nii.gz").read_text() == "previous"


# --------------------------------------------------------------------------- processes

@pytest.mark.slow
@pytest.mark.parametrize("engine", engines.ENGINES)
def test_jobs_and_chunks_give_identical_maps(engine, tmp_path):
    data = write_dataset(tmp_path / "data", mask_voxels=3)  # 2 voxels to fit, NAN_VOXEL between them
    common = ["-i", data["dwi"], "-b", data["bval"], "-ma", data["mask"], "--engine", engine, "-v", "0"]
    one = run_script("ivim_fitting.py", *common, "-o", tmp_path / "j1", "-j", "1", "--chunk-size", "3")
    two = run_script("ivim_fitting.py", *common, "-o", tmp_path / "j2", "-j", "2", "--chunk-size", "1")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    maps1, maps2 = read_maps(tmp_path / "j1"), read_maps(tmp_path / "j2")
    for name in CORE_MAPS:
        np.testing.assert_array_equal(maps1[name].get_fdata(), maps2[name].get_fdata(), err_msg=name)


@pytest.mark.slow
def test_ctrl_c_exits_130_and_writes_nothing(dataset, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "ivim_fitting.py"), "-i", dataset["dwi"], "-b", dataset["bval"],
         "-ma", dataset["mask"], "-o", out, "--engine", "lmfit", "-j", "2", "--chunk-size", "1", "-v", "2"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stderr.readline()  # printed once the inputs are loaded, just before the fit starts
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err
    assert sorted(os.listdir(tmp_path)) == ["data"]


@pytest.mark.slow
def test_test_data_matches_published_maps_whatever_the_jobs(tmp_path):
    """Fast engine, 2019 bounds: -j 1 and -j 2 agree exactly, and both agree with the original's maps."""
    common = ["-i", os.path.join(TEST_DATA, "dwi_rl.nii.gz"), "-b", os.path.join(TEST_DATA, "bval_rl.txt"),
              "-ma", os.path.join(TEST_DATA, "cord_seg_dilated.nii.gz"), "--bounds-version", "2019", "-v", "0"]
    one = run_script("ivim_fitting.py", *common, "-o", tmp_path / "j1", "-j", "1")
    two = run_script("ivim_fitting.py", *common, "-o", tmp_path / "j2", "-j", "2", "--chunk-size", "700")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    maps1, maps2 = read_maps(tmp_path / "j1"), read_maps(tmp_path / "j2")
    for name in CORE_MAPS:
        np.testing.assert_array_equal(maps1[name].get_fdata(), maps2[name].get_fdata(), err_msg=name)
    mask = nib.load(os.path.join(TEST_DATA, "cord_seg_dilated.nii.gz")).get_fdata() > 0
    reference = os.path.join(TEST_DATA, "results_you_should_get", "ivim_maps_rl")
    for name, percent in {"S0": 90, "D": 90, "Fivim": 70, "Dstar": 65}.items():  # issue 3's targets
        ref = nib.load(os.path.join(reference, f"{name}_map.nii.gz"))
        diff = np.abs(maps1[name].get_fdata()[mask] - ref.get_fdata()[mask])
        assert 100 * np.mean(diff <= ref.dataobj.slope * (1 + 1e-6)) >= percent, name


def test_no_mask_fits_the_automatic_selection(dataset, tmp_path, capsys):
    args = ["-i", dataset["dwi"], "-b", dataset["bval"], "-o", tmp_path / "out", "-v", "0"]
    code, err = call_main(args, capsys)
    assert code == 0, err
    with open(tmp_path / "out" / "ivim_fitting.json") as f:
        sidecar = json.load(f)
    assert sidecar["inputs"]["mask"] is None
    assert sidecar["counts"] == {"mask_voxels": 9, "fitted": 7, "failed": 2}
    exception = read_maps(tmp_path / "out")["exception"].get_fdata()
    assert exception[NAN_VOXEL] == 1 and exception[NONPOS_VOXEL] == 1 and exception.sum() == 2


def test_mt_0_runs_one_job_and_summary_is_printed(dataset, tmp_path, capsys):
    code = ivim_fitting.main([str(a) for a in base_args(dataset, tmp_path / "out")] + ["-j", "2", "-mt", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "fitted 4 voxels, 2 failed" in out and "1 job(s)" in out and str(tmp_path / "out") in out
    with open(tmp_path / "out" / "ivim_fitting.json") as f:
        assert json.load(f)["jobs"] == 1


# --------------------------------------------------------------------------- the Python API

TEST_DATA_CASES = [("one-step", "2020", "fast", None), ("two-step", "2020", "fast", None),
                   pytest.param("one-step", "2020", "lmfit", 3, marks=pytest.mark.slow),
                   pytest.param("two-step", "2020", "lmfit", 3, marks=pytest.mark.slow)]


@pytest.mark.parametrize("approach, bounds_version, engine, n_voxels", TEST_DATA_CASES)
def test_api_maps_are_the_cli_maps_bit_for_bit(approach, bounds_version, engine, n_voxels, tmp_path, capsys):
    """The test data (lmfit: a mask of its first few voxels) fitted by ivim_fitting.py and by
    IvimModel(...).fit(...).to_folder(...) give identical files, and from_folder reads them back."""
    dwi, bval = os.path.join(TEST_DATA, "dwi_rl.nii.gz"), os.path.join(TEST_DATA, "bval_rl.txt")
    mask_path = os.path.join(TEST_DATA, "cord_seg_dilated.nii.gz")
    mask_image = nib.load(mask_path)
    mask = mask_image.get_fdata() > 0
    if n_voxels:
        mask.flat[np.flatnonzero(mask)[n_voxels:]] = False
        mask_path = _save(tmp_path / "mask.nii.gz", mask.astype(np.int8), mask_image.affine)
    code, err = call_main(["-i", dwi, "-b", bval, "-ma", mask_path, "-mo", approach, "--engine", engine,
                           "-o", tmp_path / "cli", "-j", "2", "-v", "0"], capsys)
    assert code == 0, err

    image = nib.load(dwi)
    fit = IvimModel(np.loadtxt(bval), approach, bounds_version, engine).fit(image.get_fdata(), mask=mask)
    fit.to_folder(tmp_path / "api", affine=image)
    cli_maps, api_maps = read_maps(tmp_path / "cli"), read_maps(tmp_path / "api")
    for name in CORE_MAPS:
        assert cli_maps[name].header.get_sform(coded=True)[1] == api_maps[name].header.get_sform(coded=True)[1]
        np.testing.assert_array_equal(np.asarray(api_maps[name].dataobj), np.asarray(cli_maps[name].dataobj),
                                      err_msg=name)
        np.testing.assert_array_equal(api_maps[name].affine, cli_maps[name].affine)
    for folder in ("cli", "api"):
        back = IvimFit.from_folder(tmp_path / folder)
        assert (back.model.approach, back.model.engine) == (approach, engine)
        np.testing.assert_array_equal(back.mask, mask)
        for name in CORE_MAPS:
            np.testing.assert_array_equal(getattr(back, name), np.where(mask, getattr(fit, name).astype(np.float32),
                                                                         np.nan), err_msg=name)
    with open(tmp_path / "cli" / "ivim_fitting.json") as f:
        cli_sidecar = json.load(f)
    with open(tmp_path / "api" / "ivim_fitting.json") as f:
        api_sidecar = json.load(f)
    same = ("bvals", "model", "approach", "bounds_version", "bounds", "engine", "seed", "maps", "counts", "summary")
    assert {k: api_sidecar[k] for k in same} == {k: cli_sidecar[k] for k in same}
    assert api_sidecar["command"] is None and cli_sidecar["command"].startswith("ivim_fitting.py")


def test_api_shapes_mask_and_predict():
    """Any leading shape; NaN outside the mask; predict reuses the model; fit[index] is one voxel."""
    rng = np.random.default_rng(4)
    truth = rng.uniform([400, 0.5e-3, 0.05, 15e-3], [800, 1.5e-3, 0.18, 30e-3], (2, 3, 4))
    data = model.ivim_signal(BVALS, *np.moveaxis(truth, -1, 0))
    mask = np.array([[True, False, True], [True, True, False]])
    fit = IvimModel(BVALS).fit(data, mask=mask)
    assert fit.S0.shape == fit.f.shape == fit.exception.shape == (2, 3)
    assert np.isnan(fit.D[~mask]).all() and np.isnan(fit.exception[~mask]).all()
    np.testing.assert_array_equal(fit.exception[mask], 0)
    for j, name in enumerate(model.PARAM_NAMES):
        np.testing.assert_allclose(getattr(fit, name)[mask], truth[mask][:, j], rtol=1e-3)
    assert fit.f is fit.Fivim
    predicted = fit.predict(BVALS)
    assert predicted.shape == data.shape
    np.testing.assert_allclose(predicted[mask], data[mask], rtol=1e-5)
    assert np.isnan(predicted[~mask]).all()
    one = fit[1, 0]
    assert one.f == fit.f[1, 0] and one.predict([0, 800]).shape == (2,)
    single = IvimModel(BVALS).fit(data[0, 0])               # one voxel: 0-d maps
    assert single.D.shape == () and single.D == pytest.approx(truth[0, 0, 1], rel=1e-3)


def test_api_accepts_an_object_with_bvals_and_checks_its_inputs():
    class GradientTable:            # what the API needs of dipy's
        bvals = BVALS

    assert np.array_equal(IvimModel(GradientTable()).bvals, BVALS)
    with pytest.raises(ValueError, match="3 distinct b-values, one-step needs at least 4"):
        IvimModel([0, 0, 400, 800, 800])
    with pytest.raises(ValueError, match="unknown engine"):
        IvimModel(BVALS, engine="gpu")
    with pytest.raises(ValueError, match=r"data: expected shape \(\.\.\., 11\)"):
        IvimModel(BVALS).fit(np.ones((3, 10)))
    with pytest.raises(ValueError, match=r"mask: expected shape \(3,\)"):
        IvimModel(BVALS).fit(np.ones((3, 11)), mask=np.ones(4, bool))


def test_api_to_folder_refuses_an_existing_folder(tmp_path):
    fit = IvimModel(BVALS).fit(model.ivim_signal(BVALS, 600.0, 1e-3, 0.1, 20e-3)[None, None])
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputExistsError, match="already exists"):
        fit.to_folder(tmp_path / "out")
    fit.to_folder(tmp_path / "out", force=True)
    back = IvimFit.from_folder(tmp_path / "out")
    assert back.S0.shape == (1, 1, 1) and back.f[0, 0, 0] == pytest.approx(0.1, rel=1e-3)
    np.testing.assert_array_equal(read_maps(tmp_path / "out")["S0"].affine, np.eye(4))
