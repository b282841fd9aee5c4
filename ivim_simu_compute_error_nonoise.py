"""Estimation error of IVIM parameters without noise, on a grid of true (f, D*, D).

Each noise-free signal (S0 = 600) is fitted once; the error of f, D*, D and f·D* is
100·|p̂ − p|/p in %.  It shows what the bounds and the fitter do on their own.
"""
import sys

from ivim_common import simu_cli
from ivim_common.resources import limit_blas_threads

EXAMPLE = """\
example (the original's grid: 10 f x 10 D* x 10 D; a few seconds with the fast engine):
  ivim_simu_compute_error_nonoise.py -model one-step --bounds-version 2019 -ofolder err_nonoise \\
      -bval 5,10,20,30,50,75,150,250,600,700,800
  ivim_simu_plot.py -input err_nonoise/sim_results_*.npz -oname err_nonoise/error_plot

outputs: <ofolder>/sim_results_<yymmddHHMMSS>.npz (mean_abs_err (4, nF, nDstar, nD) in %, in the
order f, Dstar, D, fDstar) and a .json sidecar with the settings.
"""


def get_parser():
    return simu_cli.compute_parser("error_nonoise", "ivim_simu_compute_error_nonoise.py", __doc__, EXAMPLE)


def main(argv=None):
    return simu_cli.run_compute("error_nonoise", get_parser(), argv)


if __name__ == "__main__":
    limit_blas_threads()  # before numpy loads
    sys.exit(main())
