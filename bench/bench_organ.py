#!/usr/bin/env python3
"""Beyond the spinal cord, measured through ivim_fitting.py's own code path (its main()):

1. the OSIPI code collection's test signals (tests/data/osipi/generic*.json) with
   --bounds-version osipi --dstar-convention osipi, against the collection's tolerances;
2. an anisotropic volume (3 directions, D by direction, isotropic perfusion): --directions
   trace (mean D, f, D*) and each (each direction's D), at SNR 50 and 200;
3. a high-perfusion (kidney-like) voxel set: the 2020 preset against osipi and --bounds;
4. the BIDS tree written for a BIDS-named input.

Run from the repository root:  python bench/bench_organ.py [--voxels N]
"""
import argparse
import contextlib
import io as _io
import json
import os
import pathlib
import sys
import tempfile

import nibabel as nib
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import ivim_fitting  # noqa: E402
from ivim_common import simulation  # noqa: E402
from osipi_checks import OSIPI_FILES, check_tissue, fit_osipi_file  # noqa: E402


def run_cli(args):
    with contextlib.redirect_stdout(_io.StringIO()):
        rc = ivim_fitting.main([str(a) for a in args] + ["-v", "0", "-j", "1"])
    assert rc == 0, args
    return rc


def osipi_table(tmp):
    print("## 1. OSIPI test signals, --bounds-version osipi --dstar-convention osipi\n")
    totals = {}
    for name in OSIPI_FILES:
        rows, fitted, truth = fit_osipi_file(name, tmp, ["--bounds-version", "osipi", "--dstar-convention", "osipi"])
        print(f"### {name}\n\n| tissue | f fit / truth | D fit / truth | D*p fit / truth | f | D | D*p |")
        print("|---|---|---|---|---|---|---|")
        n_pass = 0
        for tissue, fit, true in zip(rows, fitted, truth):
            verdict = check_tissue(fit, true)
            n_pass += all(v != "fail" for v in verdict.values())
            print(f"| {tissue} | {fit['f']:.3f} / {true['f']:.3f} | {fit['D']:.3e} / {true['D']:.3e} | "
                  f"{fit['Dp']:.4f} / {true['Dp']:.4f} | {verdict['f']} | {verdict['D']} | {verdict['Dp']} |")
        _, fitted20, _ = fit_osipi_file(name, tmp, ["--dstar-convention", "osipi"])
        n_pass20 = sum(all(v != "fail" for v in check_tissue(f, t).values()) for f, t in zip(fitted20, truth))
        totals[name] = (n_pass, n_pass20, len(rows))
        print(f"\n{n_pass}/{len(rows)} tissues pass (the 2020 preset: {n_pass20}/{len(rows)})\n")
    return totals


def anisotropic(tmp, n_vox):
    print("## 2. Anisotropic volume: 3 directions, D = (1.7, 1.0, 0.4)e-3, f = 0.1, D* = 20e-3 (toolbox)\n")
    b_shell = [10, 20, 30, 50, 75, 100, 150, 200, 400, 600, 800]
    units = np.eye(3)
    bvals = np.array([0.0, 0.0] + [b for b in b_shell for _ in range(3)])
    bvecs = np.concatenate([np.zeros((3, 2)), np.tile(units, len(b_shell))], axis=1)
    d_diag, f, dstar, s0 = np.array([1.7e-3, 1.0e-3, 0.4e-3]), 0.1, 20e-3, 1000.0
    clean = simulation.directional_signal(bvals, bvecs, s0, d_diag, f, dstar)
    print("| SNR | mode | parameter | truth | median fit | mean error % | mean abs error % |")
    print("|---|---|---|---|---|---|---|")
    for snr in (50, 200):
        rng = np.random.default_rng(snr)
        noisy = np.hypot(clean + s0 / snr * rng.standard_normal((n_vox, bvals.size)),
                         s0 / snr * rng.standard_normal((n_vox, bvals.size)))          # Rician
        folder = tmp / f"aniso_{snr}"
        folder.mkdir()
        nib.save(nib.Nifti1Image(noisy.reshape(n_vox, 1, 1, -1).astype(np.float32), np.eye(4)), folder / "dwi.nii.gz")
        np.savetxt(folder / "dwi.bval", bvals[None], fmt="%g")
        np.savetxt(folder / "dwi.bvec", bvecs, fmt="%g")
        run_cli(["-i", folder / "dwi.nii.gz", "--directions", "trace", "-o", folder / "trace"])
        run_cli(["-i", folder / "dwi.nii.gz", "--directions", "each", "-o", folder / "each"])
        maps = {k: nib.load(folder / "trace" / f"{k}_map.nii.gz").get_fdata().ravel()
                for k in ("D", "Fivim", "Dstar")}
        for name, true in (("D (mean)", d_diag.mean()), ("f", f), ("D*", dstar)):
            key = {"D (mean)": "D", "f": "Fivim", "D*": "Dstar"}[name]
            err = 100 * (maps[key] - true) / true
            print(f"| {snr} | trace | {name} | {true:.4g} | {np.median(maps[key]):.4g} | {np.mean(err):+.1f} | "
                  f"{np.mean(np.abs(err)):.1f} |")
        for k in range(3):
            side = json.loads((folder / "each" / f"dir{k + 1}" / "ivim_fitting.json").read_text())
            d = nib.load(folder / "each" / f"dir{k + 1}" / "D_map.nii.gz").get_fdata().ravel()
            true = float(np.asarray(side["directions"]["direction"]) ** 2 @ d_diag)
            err = 100 * (d - true) / true
            print(f"| {snr} | each, dir{k + 1} {side['directions']['direction']} | D | {true:.4g} | "
                  f"{np.median(d):.4g} | {np.mean(err):+.1f} | {np.mean(np.abs(err)):.1f} |")
    print()


def high_perfusion(tmp, n_vox):
    f, d, dp, s0, snr = 0.30, 1.9e-3, 0.06, 1000.0, 100
    print(f"## 3. High perfusion (kidney-like): f = {f}, D = {d:g}, D*p = {dp:g} (D* = {dp - d:g}), SNR {snr}, "
          f"{n_vox} voxels, Rician\n")
    bvals = np.array([0, 10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400, 500, 600, 800], dtype=float)
    from ivim_common.model import ivim_signal
    rng = np.random.default_rng(1)
    clean = ivim_signal(bvals, s0, d, f, dp - d)
    noisy = np.hypot(clean + s0 / snr * rng.standard_normal((n_vox, bvals.size)),
                     s0 / snr * rng.standard_normal((n_vox, bvals.size)))
    folder = tmp / "kidney"
    folder.mkdir()
    nib.save(nib.Nifti1Image(noisy.reshape(n_vox, 1, 1, -1).astype(np.float32), np.eye(4)), folder / "dwi.nii.gz")
    np.savetxt(folder / "dwi.bval", bvals[None], fmt="%g")
    print("| options | f median (mean abs err %) | D median (mean abs err %) | D*p median (mean abs err %) |")
    print("|---|---|---|---|")
    for label, extra in (("--bounds-version 2020 (default)", []), ("--bounds-version 2019", ["--bounds-version", "2019"]),
                         ("--bounds-version osipi", ["--bounds-version", "osipi"]),
                         ('--bounds "f=0:0.6,Dstar=0.005:0.3,D=0.1e-3:3e-3"',
                          ["--bounds", "f=0:0.6,Dstar=0.005:0.3,D=0.1e-3:3e-3"])):
        out = folder / f"o{len(os.listdir(folder))}"
        run_cli(["-i", folder / "dwi.nii.gz", "--dstar-convention", "osipi", "-o", out] + extra)
        cells = []
        for key, true in (("Fivim", f), ("D", d), ("Dstar", dp)):
            v = nib.load(out / f"{key}_map.nii.gz").get_fdata().ravel()
            cells.append(f"{np.median(v):.4g} ({np.mean(np.abs(v - true) / true) * 100:.1f})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()


def bids_tree(tmp):
    print("## 4. BIDS derivatives of sub-01_ses-2_acq-ivim_dwi.nii.gz (--directions trace --bids)\n")
    src = tmp / "rawdata" / "sub-01" / "ses-2" / "dwi"
    src.mkdir(parents=True)
    b_shell = [10, 20, 50, 100, 200, 400, 800]
    bvals = np.array([0.0] + [b for b in b_shell for _ in range(3)])
    bvecs = np.concatenate([np.zeros((3, 1)), np.tile(np.eye(3), len(b_shell))], axis=1)
    data = simulation.directional_signal(bvals, bvecs, 1000.0, [1.7e-3, 1.0e-3, 0.4e-3], 0.1, 20e-3)
    nib.save(nib.Nifti1Image(np.tile(data, (2, 2, 1, 1)).astype(np.float32), np.eye(4)),
             src / "sub-01_ses-2_acq-ivim_dwi.nii.gz")
    np.savetxt(src / "sub-01_ses-2_acq-ivim_dwi.bval", bvals[None], fmt="%g")
    np.savetxt(src / "sub-01_ses-2_acq-ivim_dwi.bvec", bvecs, fmt="%g")
    out = tmp / "derivatives" / "ivim"
    run_cli(["-i", src / "sub-01_ses-2_acq-ivim_dwi.nii.gz", "--directions", "trace", "--bids", "-o", out])
    print("```")
    for path in sorted(out.rglob("*")):
        print(("  " * (len(path.relative_to(out).parts) - 1)) + path.name + ("/" if path.is_dir() else ""))
    print("```\n")
    side = json.loads(next(out.rglob("*param-f_dwimap.json")).read_text())
    print("param-f sidecar keys:", list(side), "; Model.Parameters:", list(side["Model"]["Parameters"]))
    print("dataset_description.json:", json.loads((out / "dataset_description.json").read_text()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, default=500, help="voxels of the synthetic sets (default 500)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        osipi_table(tmp)
        anisotropic(tmp, args.voxels)
        high_perfusion(tmp, args.voxels)
        bids_tree(tmp)


if __name__ == "__main__":
    main()
