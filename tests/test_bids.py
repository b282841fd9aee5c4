"""ivim_bids.py, the BIDS App: the dataset parser, both levels, masks, the SNR, the reports,
batch behaviour and bad input, on small synthetic BIDS datasets of known truth."""
import csv
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

import ivim_bids
from conftest import REPO
from ivim_common import IvimModel, bids_app, model, viewer
from ivim_common.io import bids_dataset
from ivim_common.errors import InputError

BVALS = np.array([0, 0, 0, 10, 20, 40, 80, 150, 300, 500, 800], dtype=float)
AFFINE = np.diag([2.0, 2.0, 4.0, 1.0])
SHAPE = (8, 8, 2)
BODY = (slice(2, 6), slice(2, 6), slice(None))     # 32 voxels of tissue, air around
F_TRUE = {"01": 0.08, "02": 0.12, "03": 0.16}
D_TRUE, DSTAR_TRUE, S0_TRUE, SIGMA = 1.0e-3, 25e-3, 1000.0, 4.0


def body_mask():
    mask = np.zeros(SHAPE, dtype=bool)
    mask[BODY] = True
    return mask


def write_dwi(path, f, seed, n_volumes=BVALS.size):
    """A DWI of the body (IVIM with f, Gaussian noise SIGMA) in air (|noise|)."""
    rng = np.random.default_rng(seed)
    signal = model.ivim_signal(BVALS, np.where(body_mask(), S0_TRUE, 0.0), D_TRUE, f, DSTAR_TRUE)
    signal = np.abs(signal + rng.normal(0, SIGMA, signal.shape))[..., :n_volumes]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(signal.astype(np.float32), AFFINE), path)


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def make_bids(root, participants=("01", "02"), sessions=("1", "2")):
    """A dataset: participants x sessions of acq-ivim DWIs, the b-values once at the top
    (acq-ivim_dwi.bval, inherited), a dataset-level dwi.json; returns the root."""
    write_text(os.path.join(root, "dataset_description.json"), json.dumps({"Name": "test", "BIDSVersion": "1.10.0"}))
    write_text(os.path.join(root, "acq-ivim_dwi.bval"), " ".join(f"{b:g}" for b in BVALS) + "\n")
    write_text(os.path.join(root, "dwi.json"), json.dumps({"RepetitionTime": 4.0, "EchoTime": 0.07}))
    for k, sub in enumerate(participants):
        for j, ses in enumerate(sessions):
            write_dwi(os.path.join(root, f"sub-{sub}", f"ses-{ses}", "dwi", f"sub-{sub}_ses-{ses}_acq-ivim_dwi.nii.gz"),
                      F_TRUE[sub], seed=10 * k + j)
    return root


def run(argv, capsys):
    """ivim_bids.main in this process; returns (exit code, stderr)."""
    try:
        code = ivim_bids.main([str(a) for a in argv] + ["-j", "1"])
    except SystemExit as exc:            # argparse usage errors
        code = exc.code
    return code, capsys.readouterr().err


def read_tsv(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


# --------------------------------------------------------------------------- the parser

def test_inheritance_sessions_runs_acquisitions(tmp_path):
    root = make_bids(str(tmp_path / "raw"), participants=("01", "02"), sessions=("1",))
    dwi_dir = tmp_path / "raw" / "sub-01" / "ses-1" / "dwi"
    write_dwi(str(dwi_dir / "sub-01_ses-1_acq-ivim_run-2_dwi.nii.gz"), 0.1, 5)
    write_dwi(str(dwi_dir / "sub-01_ses-1_acq-other_dwi.nii.gz"), 0.1, 6)
    write_text(str(dwi_dir / "sub-01_ses-1_acq-other_dwi.bval"), "0 10 20 50\n")
    write_text(str(tmp_path / "raw" / "sub-02" / "sub-02_acq-ivim_dwi.bval"), "1 2 3\n")          # nearer wins
    write_text(str(tmp_path / "raw" / "sub-01" / "ses-1" / "sub-01_ses-1_dwi.json"), json.dumps({"EchoTime": 0.09}))
    write_text(str(tmp_path / "raw" / "sub-01" / "ses-1" / "dwi" / "sub-01_ses-1_acq-ivim_dwi.bvec"), "1\n0\n0\n")
    dataset = bids_dataset.BidsDataset(root)
    assert dataset.participants() == ["01", "02"] and dataset.select(["sub-02", "01"]) == ["02", "01"]
    dwis = {d.name: d for d in dataset.dwis("01")}
    assert set(dwis) == {"sub-01_ses-1_acq-ivim", "sub-01_ses-1_acq-ivim_run-2", "sub-01_ses-1_acq-other"}
    run2 = dwis["sub-01_ses-1_acq-ivim_run-2"]
    assert run2.entities == {"sub": "01", "ses": "1", "acq": "ivim", "run": "2"}
    assert run2.bval == os.path.join(root, "acq-ivim_dwi.bval")           # from the dataset's top
    assert run2.bvec.endswith("sub-01_ses-1_acq-ivim_dwi.bvec")            # the one without run applies too
    assert dwis["sub-01_ses-1_acq-other"].bval.endswith("sub-01_ses-1_acq-other_dwi.bval")
    assert run2.metadata == {"RepetitionTime": 4.0, "EchoTime": 0.09}      # the nearer JSON overrides
    assert [os.path.basename(p) for p in run2.json_files] == ["dwi.json", "sub-01_ses-1_dwi.json"]
    assert dataset.dwis("02")[0].bval.endswith(os.path.join("sub-02", "sub-02_acq-ivim_dwi.bval"))
    assert dataset.dwis("01", ["ses-2"]) == [] and len(dataset.dwis("01", ["1"])) == 3
    with pytest.raises(InputError, match="no participant sub-07"):
        dataset.select(["07"])
    with pytest.raises(InputError, match="not a BIDS dataset"):
        bids_dataset.BidsDataset(str(tmp_path))


def test_output_dir_inside_bids_dir(tmp_path):
    root = make_bids(str(tmp_path / "raw"), participants=("01",), sessions=("1",))
    bids_dataset.check_output_dir(root, os.path.join(root, "derivatives", "ivim"))
    bids_dataset.check_output_dir(root, str(tmp_path / "out"))
    for bad in (os.path.join(root, "ivim"), root, str(tmp_path), os.path.join(root, "derivatives")):
        with pytest.raises(InputError, match="output folder"):
            bids_dataset.check_output_dir(root, bad)


# --------------------------------------------------------------------------- mask and SNR

def test_auto_mask_finds_the_body():
    rng = np.random.default_rng(1)
    data = np.abs(rng.normal(0, SIGMA, (16, 16, 3, 4)))
    body = np.zeros((16, 16, 3), dtype=bool)
    body[3:12, 4:13] = True
    data[body] += 800.0
    data[7, 8, 1] = 2.0                    # a dark voxel inside (a vessel, CSF): a hole, filled
    data[14, 14, 0] += 900.0               # a bright speck apart: not the largest component
    mask = bids_app.auto_mask(data, np.array([0, 0, 100, 500.0]))
    np.testing.assert_array_equal(mask, body)
    with pytest.raises(InputError, match="no contrast"):
        bids_app.auto_mask(np.ones((4, 4, 2, 3)), np.array([0, 100, 500.0]))


@pytest.mark.parametrize("repeats", [True, False])
def test_snr_on_a_phantom_of_known_snr(repeats):
    """SNR at the lowest b = S(lowest b) / sigma: from the repeats where there are, else from the
    fit's residuals; a phantom of 2000 voxels with SNR 50 gives it within 5 %."""
    bvals = BVALS if repeats else BVALS[2:]
    rng = np.random.default_rng(3)
    sigma, f = 20.0, 0.1
    truth = model.ivim_signal(bvals, S0_TRUE, D_TRUE, f, DSTAR_TRUE)
    signal = truth + rng.normal(0, sigma, (2000, bvals.size))
    ivim = IvimModel(bvals)
    fit = ivim.fit(signal)
    record = bids_app.snr_record(ivim, signal, fit.RMSE)
    expected = truth[0] / sigma
    assert record["measured"] == pytest.approx(expected, rel=0.05)
    assert record["sigma_method"].startswith("pooled scatter") == repeats
    assert 1 < record["required_median"] < record["required_p90"] < 1e5


# --------------------------------------------------------------------------- both levels

def test_participant_and_group(tmp_path, capsys):
    """Three participants, one broken: the others are fitted, the exit code is 1 with a summary;
    the group table recovers the truth; a rerun skips, --force redoes; the report is one file."""
    root = make_bids(str(tmp_path / "raw"), participants=("01", "02", "03"))
    write_text(os.path.join(root, "sub-03", "ses-2", "dwi", "sub-03_ses-2_acq-ivim_dwi.bval"), "0 10 20 800\n")
    out = tmp_path / "raw" / "derivatives" / "ivim"
    code, err = run([root, out, "participant"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert sum("FAILED" in line for line in lines) == 1 and "sub-03_ses-2_acq-ivim: FAILED" in err
    assert "has 11 volumes but b-value file" in err
    assert lines[-1] == "ivim_bids.py: error: 1 of 3 participant(s) failed: sub-03 (see the lines above)"
    assert "3 participant(s): 2 done, 5 DWI(s) fitted" in err
    files = files_under(out)
    assert not any("sub-03_ses-2" in f for f in files)              # nothing of the broken DWI
    assert "sub-01.html" in files and "sub-03.html" in files       # its other session is reported
    assert "has 11 volumes but b-value file" in (out / "sub-03.html").read_text()   # with the failure
    assert "sub-01/ses-2/dwi/sub-01_ses-2_acq-ivim_desc-brain_mask.nii.gz" in files
    for param in ("S0", "D", "f", "Dstar", "fDstar", "fSd", "DstarSd", "modelChoice", "boundsHit", "RMSE", "ADC"):
        assert f"sub-02/ses-1/dwi/sub-02_ses-1_acq-ivim_model-ivim_param-{param}_dwimap.nii.gz" in files
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Name"] == "ivim-toolbox"
    assert description["SourceDatasets"][0]["URL"] == "file://" + os.path.realpath(root)
    assert (out / ".bidsignore").read_text() == bids_app.BIDSIGNORE
    doc = json.loads((out / "sub-01" / "ses-1" / "dwi" / "sub-01_ses-1_acq-ivim_model-ivim_dwimap.json").read_text())
    assert doc["inputs"]["bvals"]["path"] == os.path.join(root, "acq-ivim_dwi.bval")
    assert [r["path"] for r in doc["inputs"]["dwi_json"]] == [os.path.join(root, "dwi.json")]
    assert doc["dwi_metadata"] == {"RepetitionTime": 4.0, "EchoTime": 0.07}
    assert doc["snr"]["measured"] == pytest.approx(S0_TRUE / SIGMA, rel=0.2)

    page = (out / "sub-01.html").read_text()
    assert "http" not in page.replace("http-equiv", "") and 'src="' not in page
    assert page.count("src='data:image/png;base64,") == 2 * 4 and "sub-01_ses-2_acq-ivim" in page

    code, err = run([root, out, "participant", "--participant-label", "sub-01"], capsys)
    assert code == 0 and err.count("skipped, its outputs are complete") == 2 and "report" not in err
    mtime = os.path.getmtime(out / "sub-01" / "ses-1" / "dwi" / "sub-01_ses-1_acq-ivim_model-ivim_param-f_dwimap.nii.gz")
    code, err = run([root, out, "participant", "--participant-label", "01", "--force"], capsys)
    assert code == 0 and err.count(": fitted 32 voxels") == 2 and "sub-01: report" in err
    assert os.path.getmtime(out / "sub-01" / "ses-1" / "dwi"
                            / "sub-01_ses-1_acq-ivim_model-ivim_param-f_dwimap.nii.gz") > mtime

    code, err = run([root, out, "group"], capsys)
    assert code == 0, err
    rows = read_tsv(out / "group_ivim.tsv")
    assert list(rows[0])[:5] == ["participant_id", "session_id", "acq", "roi", "n_voxels"]
    assert {"S0_median", "f_iqr", "Dstar_median", "f_sd_median", "share_ivim", "share_at_bound"} <= set(rows[0])
    assert [(r["participant_id"], r["session_id"]) for r in rows] == [
        ("sub-01", "ses-1"), ("sub-01", "ses-2"), ("sub-02", "ses-1"), ("sub-02", "ses-2"), ("sub-03", "ses-1")]
    for r in rows:
        assert r["roi"] == "mask" and r["n_voxels"] == "32" and r["acq"] == "ivim"
        assert float(r["f_median"]) == pytest.approx(F_TRUE[r["participant_id"][4:]], abs=0.015)
        assert float(r["D_median"]) == pytest.approx(D_TRUE, rel=0.1)
        assert float(r["S0_median"]) == pytest.approx(S0_TRUE, rel=0.02)
        assert float(r["share_ivim"]) > 0.9
    group_page = (out / "group_ivim.html").read_text()
    assert "http" not in group_page and group_page.count("src='data:image/png;base64,") == 4
    code, err = run([root, out, "group"], capsys)
    assert code == 1 and "already exists" in err                     # the group table without --force


def test_mask_none_mask_dir_and_dseg(tmp_path, capsys):
    root = make_bids(str(tmp_path / "raw"), participants=("01",), sessions=("1",))
    deriv = tmp_path / "prep"
    folder = deriv / "sub-01" / "ses-1" / "dwi"
    folder.mkdir(parents=True)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[2:4, 2:6] = 1                                                # 16 voxels of the body
    nib.save(nib.Nifti1Image(mask, AFFINE), str(folder / "sub-01_ses-1_acq-ivim_desc-brain_mask.nii.gz"))
    dseg = np.zeros(SHAPE, dtype=np.int16)
    dseg[2:4, 2:6] = 1
    dseg[4:6, 2:6, 0] = 2
    nib.save(nib.Nifti1Image(dseg, AFFINE), str(folder / "sub-01_ses-1_acq-ivim_dseg.nii.gz"))
    write_text(str(deriv / "dseg.tsv"), "index\tname\n1\tleft\n2\tright\n")
    write_text(str(deriv / "dataset_description.json"), "{}")

    code, err = run([root, tmp_path / "none", "participant", "--mask", "none"], capsys)
    assert code == 0, err
    assert not any("mask" in f for f in files_under(tmp_path / "none"))
    code, err = run([root, tmp_path / "none", "group", "--dseg-dir", deriv], capsys)
    rows = read_tsv(tmp_path / "none" / "group_ivim.tsv")
    assert [(r["roi"], r["n_voxels"]) for r in rows] == [("mask", str(np.prod(SHAPE))), ("left", "16"), ("right", "8")]
    assert float(rows[1]["f_median"]) == pytest.approx(F_TRUE["01"], abs=0.02)

    code, err = run([root, tmp_path / "given", "participant", "--mask-dir", deriv], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "given" / "sub-01" / "ses-1" / "dwi"
                      / "sub-01_ses-1_acq-ivim_model-ivim_dwimap.json").read_text())
    assert doc["counts"]["mask_voxels"] == 16 and doc["inputs"]["mask"]["path"].startswith(str(deriv))

    nib.save(nib.Nifti1Image(mask[:7], AFFINE), str(folder / "sub-01_ses-1_acq-ivim_desc-brain_mask.nii.gz"))
    code, err = run([root, tmp_path / "grid", "participant", "--mask-dir", deriv], capsys)
    assert code == 1 and "shape (7, 8, 2) differs from the DWI's" in err
    assert not (tmp_path / "grid" / "sub-01").exists()


def test_bad_input(tmp_path, capsys):
    """One line each, exit 2 (usage) or 1, nothing half-written."""
    root = make_bids(str(tmp_path / "raw"), participants=("01",), sessions=("1",))
    cases = [([tmp_path, tmp_path / "o1", "participant"], 2, "not a BIDS dataset"),
             ([root, tmp_path / "o2", "participant", "--participant-label", "09"], 2, "no participant sub-09"),
             ([root, os.path.join(root, "ivim"), "participant"], 2, "not under its derivatives/"),
             ([root, tmp_path / "o3", "participant", "--mask", "none", "--mask-dir", tmp_path], 2, "give one"),
             ([root, tmp_path / "o5", "participant", "--engine", "bayes", "--prior", "spatial", "--bootstrap", "5"],
              2, "--bootstrap does not apply to --prior spatial")]
    for argv, expected, message in cases:
        code, err = run(argv, capsys)
        assert code == expected and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == ["raw"]
    os.remove(os.path.join(root, "acq-ivim_dwi.bval"))                 # no b-values anywhere up the tree
    code, err = run([root, tmp_path / "o4", "participant"], capsys)
    assert code == 1 and "no .bval applies to it" in err
    assert files_under(tmp_path / "o4") == [".bidsignore", "dataset_description.json"]


def test_spatial_prior_on_a_one_voxel_mask_fails_that_participant_only(tmp_path, capsys):
    """--prior spatial where a DWI's mask holds one voxel: that participant fails in one line,
    nothing of it written, the others are fitted, exit 1."""
    root = make_bids(str(tmp_path / "raw"), participants=("01", "02"), sessions=("1",))
    deriv = tmp_path / "prep"
    write_text(str(deriv / "dataset_description.json"), "{}")
    for sub, region in (("01", (3, 3, 0)), ("02", BODY)):
        mask = np.zeros(SHAPE, dtype=np.uint8)
        mask[region] = 1
        folder = deriv / f"sub-{sub}" / "ses-1" / "dwi"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(mask, AFFINE), str(folder / f"sub-{sub}_ses-1_acq-ivim_desc-brain_mask.nii.gz"))
    code, err = run([root, tmp_path / "out", "participant", "--mask-dir", deriv, "--engine", "bayes",
                     "--prior", "spatial"], capsys)
    assert code == 1 and "Traceback" not in err, err
    assert "sub-01_ses-1_acq-ivim: FAILED: DWI " in err and "needs at least 2 voxels in the mask, got 1" in err
    assert not (tmp_path / "out" / "sub-01").exists()
    assert (tmp_path / "out" / "sub-02" / "ses-1" / "dwi" / "sub-02_ses-1_acq-ivim_model-ivim_dwimap.json").is_file()


def test_viewer_opens_a_bids_map(tmp_path, capsys):
    root = make_bids(str(tmp_path / "raw"), participants=("01",), sessions=("1",))
    out = tmp_path / "out"
    assert run([root, out, "participant"], capsys)[0] == 0
    folder = viewer.load_fit_folder(str(out / "sub-01" / "ses-1" / "dwi" / "sub-01_ses-1_acq-ivim_model-ivim_param-f_dwimap.nii.gz"))
    assert folder.name == "Fivim" and {"S0", "D", "Dstar", "RMSE", "model_choice"} <= set(folder.maps)
    assert folder.dwi.shape == SHAPE + (BVALS.size,) and folder.mask.sum() == 32 and not folder.notes
    assert folder.fit.predict(BVALS)[3, 3, 0] == pytest.approx(folder.dwi[3, 3, 0], rel=0.05)
    folder.maps["Fivim_sd"][3, 3, 0] = np.nan                  # f at a bound: no SD, still a fitted voxel
    assert folder.status((3, 3, 0)) == "fitted"


@pytest.mark.slow
def test_concurrent_participants_share_one_output_dir(tmp_path):
    """Two array tasks at once on one OUTPUT_DIR: both succeed, the shared files are whole."""
    root = make_bids(str(tmp_path / "raw"), participants=("01", "02"), sessions=("1",))
    out = str(tmp_path / "out")
    procs = [subprocess.Popen([sys.executable, os.path.join(REPO, "ivim_bids.py"), root, out, "participant",
                               "--participant-label", label, "-j", "1"], stderr=subprocess.PIPE, text=True)
             for label in ("01", "02")]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
        proc.stderr.close()
    assert json.loads(open(os.path.join(out, "dataset_description.json")).read())["DatasetType"] == "derivative"
    assert open(os.path.join(out, ".bidsignore")).read() == bids_app.BIDSIGNORE
    assert not [f for f in files_under(out) if ".ivim_" in f or f.endswith(".ivim-lock")]
    assert {"sub-01.html", "sub-02.html"} <= set(os.listdir(out))


def test_group_outliers_and_a_large_group(tmp_path):
    """An outlier is a median beyond 3 scaled MADs and 5 % of the group's; a group of near-identical
    fits flags nobody; beyond MAX_BOXES DWIs the page still shows every parameter."""
    from ivim_common import report

    assert report.outliers([0.10, 0.101, 0.099, 0.1005, 0.16, None]) == {4}
    assert report.outliers([1000.0, 1000.2, 999.9, 1000.1, 1001.0]) == set()
    rng = np.random.default_rng(0)
    n = report.MAX_BOXES + 5
    values = [({}, {"f": rng.normal(0.1 + 0.1 * (k == 7), 0.01, 50), "D": rng.normal(1e-3, 1e-4, 50),
                    "Dstar": rng.normal(0.02, 0.002, 50), "S0": rng.normal(500, 20, 50)}) for k in range(n)]
    rows = [{"participant_id": f"sub-{k:02d}", "session_id": None, "roi": "mask",
             **{f"{c}_median": float(np.median(v[c])) for c in ("f", "D", "Dstar", "S0")}} for k, (_, v) in enumerate(values)]
    report.write_group_report(str(tmp_path / "g.html"), rows, ["participant_id", "session_id", "roi", "f_median"],
                              values, ["sub-99"])
    page = (tmp_path / "g.html").read_text()
    assert page.count("src='data:image/png;base64,") == 4 and "outliers: <b>sub-07</b>" in page and "sub-99" in page
