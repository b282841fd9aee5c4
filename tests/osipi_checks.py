"""The OSIPI IVIM code collection's test signals and tolerances, run through ivim_fitting.py.

The files in tests/data/osipi/ are copied unchanged from OSIPI/TF2.4_IVIM-MRI_CodeCollection
(Apache-2.0, see tests/data/osipi/README.md and LICENSE).  The tolerances are those of its
tests/IVIMmodels/unit_tests/test_ivim_fit.py as stated in the toolbox's issue 14: rtol 0.1,
atol f 0.2, D 5e-4, D*p 0.1; D is checked where f < 0.8, D*p where f > 0.03.
"""
import contextlib
import io
import json
import pathlib

import nibabel as nib
import numpy as np

DATA = pathlib.Path(__file__).resolve().parent / "data" / "osipi"
OSIPI_FILES = ("generic.json", "generic_brain.json", "generic_one.json", "generic_two.json",
               "generic_three.json", "generic_four.json")
RTOL = {"f": 0.1, "D": 0.1, "Dp": 0.1}
ATOL = {"f": 0.2, "D": 5e-4, "Dp": 0.1}
# OSIPI's bounds test: narrow bounds (D, f, D*p, S0 of the normalised signal) that must hold
NARROW = "S0=1.1:1.3,f=0.2:0.3,Dstar=0.01:0.02,D=0.8e-3:1.2e-3"
NARROW_BOX = {"D": (0.8e-3, 1.2e-3), "f": (0.2, 0.3), "Dp": (0.01, 0.02)}


def load(name):
    """(tissue names, b-values, signals normalised by their first sample as OSIPI's tests do, truths)."""
    doc = json.loads((DATA / name).read_text())
    bvals = np.asarray(doc.pop("config")["bvalues"], dtype=float)
    tissues = list(doc)
    signal = np.array([np.asarray(doc[t]["data"], dtype=float) / doc[t]["data"][0] for t in tissues])
    truth = [{k: doc[t][k] for k in ("f", "D", "Dp")} for t in tissues]
    return tissues, bvals, signal, truth


def fit_osipi_file(name, tmp, options):
    """Fit every tissue of a generic*.json through ivim_fitting.main (one voxel per tissue);
    returns (tissues, fitted [{f, D, Dp}], truths)."""
    import ivim_fitting

    tissues, bvals, signal, truth = load(name)
    folder = pathlib.Path(tmp) / f"osipi_{name}_{len(list(pathlib.Path(tmp).glob('osipi_*')))}"
    folder.mkdir()
    nib.save(nib.Nifti1Image(signal.reshape(len(tissues), 1, 1, -1).astype(np.float32), np.eye(4)),
             folder / "dwi.nii.gz")
    np.savetxt(folder / "dwi.bval", bvals[None], fmt="%g")
    mask = np.ones((len(tissues), 1, 1), dtype=np.uint8)     # every tissue, whatever its signal
    nib.save(nib.Nifti1Image(mask, np.eye(4)), folder / "mask.nii.gz")
    with contextlib.redirect_stdout(io.StringIO()):
        rc = ivim_fitting.main(["-i", str(folder / "dwi.nii.gz"), "-ma", str(folder / "mask.nii.gz"),
                                "-o", str(folder / "maps"), "-v", "0", "-j", "1", *options])
    assert rc == 0
    maps = {k: nib.load(folder / "maps" / f"{k}_map.nii.gz").get_fdata().ravel() for k in ("Fivim", "D", "Dstar")}
    fitted = [{"f": maps["Fivim"][i], "D": maps["D"][i], "Dp": maps["Dstar"][i]} for i in range(len(tissues))]
    return tissues, fitted, truth


def check_tissue(fit, truth):
    """'pass', 'fail' or 'n/a' (not checked) per parameter, as OSIPI's test_ivim_fit_saved."""
    def close(key):
        ok = abs(fit[key] - truth[key]) <= ATOL[key] + RTOL[key] * abs(truth[key])
        return "pass" if ok else "fail"
    return {"f": close("f"),
            "D": close("D") if truth["f"] < 0.8 else "n/a",
            "Dp": close("Dp") if truth["f"] > 0.03 else "n/a"}
