#!/usr/bin/env python3
"""What ivim_bids.py's participant level adds to the fit, and the report's time, on the test data.

One BIDS dataset of one participant made from test_data/ (dwi_rl.nii.gz, its b-values at the
top of the dataset, the cord mask in a derivatives dataset), then, in this process and
alternating, REPEATS times each (numba compiled first, one job, the median printed):

  fit      IvimModel(bvals).fit(data, mask): the fit alone
  fitting  ivim_fitting.main(-i -b -ma -o --bids): the same fit as a command (load, fit, write)
  app      ivim_bids.py's work for the DWI (parse the dataset, find the b-values and the mask,
           load, fit, SNR and required SNR, write every map), the report excluded
  auto     the same with --mask auto (the mask computed and written)
  report   the participant's HTML report of that fit

example:
  python bench/bench_bids.py --repeats 5
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import ivim_common  # noqa: E402

ivim_common.limit_blas_threads()

import ivim_bids  # noqa: E402
import ivim_fitting  # noqa: E402
from ivim_common import IvimModel, bids_app, bids_dataset, io, report  # noqa: E402

TEST_DATA = os.path.join(HERE, "..", "test_data")


def make_dataset(folder):
    raw, deriv = os.path.join(folder, "raw"), os.path.join(folder, "prep")
    os.makedirs(os.path.join(raw, "sub-01", "dwi"))
    os.makedirs(os.path.join(deriv, "sub-01", "dwi"))
    with open(os.path.join(raw, "dataset_description.json"), "w") as f:
        json.dump({"Name": "bench", "BIDSVersion": "1.10.0"}, f)
    shutil.copy(os.path.join(TEST_DATA, "dwi_rl.nii.gz"), os.path.join(raw, "sub-01", "dwi", "sub-01_dwi.nii.gz"))
    shutil.copy(os.path.join(TEST_DATA, "bval_rl.txt"), os.path.join(raw, "dwi.bval"))
    shutil.copy(os.path.join(TEST_DATA, "cord_seg_dilated.nii.gz"),
                os.path.join(deriv, "sub-01", "dwi", "sub-01_desc-brain_mask.nii.gz"))
    return raw, deriv


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench_bids_")
    try:
        raw, deriv = make_dataset(folder)
        dwi_path = os.path.join(raw, "sub-01", "dwi", "sub-01_dwi.nii.gz")
        mask_path = os.path.join(deriv, "sub-01", "dwi", "sub-01_desc-brain_mask.nii.gz")
        inputs = io.load_fit_inputs(dwi_path, os.path.join(raw, "dwi.bval"), mask_path)
        IvimModel(inputs.bvals).fit(inputs.data, inputs.selected)           # numba compiled, cached

        def app(out, mask_flags):
            app_args = ivim_bids.get_parser().parse_args([raw, out, "participant", "-j", "1", "-v", "0", *mask_flags])
            ivim_fitting.check_fitting_arguments(ivim_bids.get_parser(), app_args)
            app_args.mask = app_args.mask or "auto"
            dataset = bids_dataset.BidsDataset(raw)
            return bids_app.fit_dwi(app_args, [], dataset.dwis("01")[0])

        times = {k: [] for k in ("fit", "fitting", "app", "auto", "report")}
        for k in range(args.repeats):
            times["fit"].append(timed(lambda: IvimModel(inputs.bvals).fit(inputs.data, inputs.selected))[0])
            times["fitting"].append(timed(lambda: ivim_fitting.main(
                ["-i", dwi_path, "-b", os.path.join(raw, "dwi.bval"), "-ma", mask_path, "--bids",
                 "-o", os.path.join(folder, f"fitting{k}"), "-j", "1", "-v", "0"]))[0])
            seconds, docs = timed(lambda: app(os.path.join(folder, f"app{k}"), ["--mask-dir", deriv]))
            times["app"].append(seconds)
            times["auto"].append(timed(lambda: app(os.path.join(folder, f"auto{k}"), ["--mask", "auto"]))[0])
            times["report"].append(timed(lambda: report.write_participant_report(
                os.path.join(folder, f"sub-01_{k}.html"), "sub-01", docs))[0])
        median = {k: statistics.median(v) for k, v in times.items()}
        print(f"test data: {int(inputs.selected.sum())} voxels x {inputs.bvals.size} b-values (cord mask), one job, "
              f"median of {args.repeats}; load average {os.getloadavg()[0]:.2f}")
        print(f"{'step':10s} {'seconds':>8s} {'/ fit':>7s} {'/ fitting':>10s}")
        for name, value in median.items():
            print(f"{name:10s} {value:8.3f} {value / median['fit']:7.2f} {value / median['fitting']:10.2f}")
        print(f"participant level over ivim_fitting.py --bids: {100 * (median['app'] / median['fitting'] - 1):+.1f} % "
              f"(mask from --mask-dir); the report: {median['report']:.2f} s for one DWI")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
