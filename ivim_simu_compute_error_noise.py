"""Estimation error of IVIM parameters with noise, on a grid of true (f, D*, D).

For every true (f, D*, D), --n-draws noisy signals (S0 = 600, σ = 600/SNR; Gaussian as the
original, or Rician) are fitted and the error of f, D*, D and f·D* is summarised: mean and SD of
the absolute error in % (100·|p̂ − p|/p), mean signed error (bias), 5/50/95th percentiles of the
signed error, the number of failed fits (left out of the statistics), and per parameter the
mean SD the fits predict, the empirical SD of the estimates and the coverage of the 95 % interval.
"""
import sys

from ivim_common import simu_cli
from ivim_common.resources import limit_blas_threads

EXAMPLE = """\
example (the original toolbox's README example, two-step at SNR 180; about 10 s on 2 cores):
  ivim_simu_compute_error_noise.py -model two-step -snr 180 -ofolder err_snr180 \\
      -bval 5,10,20,30,50,75,150,250,600,700,800
  ivim_simu_plot.py -input err_snr180/sim_results_*.npz -oname err_snr180/error_plot

outputs: <ofolder>/sim_results_<yymmddHHMMSS>.npz (mean_abs_err, sd_abs_err, mean_signed_err
(4, nF, nDstar, nD), pct_signed_err (3, 4, nF, nDstar, nD), n_failed (nF, nDstar, nD), in the order
f, Dstar, D, fDstar, errors in %; how well the fits' own SDs describe the errors: mean_pred_sd,
emp_sd (% of the true value), coverage_95 (share of draws with |error| <= 1.96 SD), n_with_sd)
and a .json sidecar with the settings.
"""


def get_parser():
    return simu_cli.compute_parser("error_noise", "ivim_simu_compute_error_noise.py", __doc__, EXAMPLE)


def main(argv=None):
    return simu_cli.run_compute("error_noise", get_parser(), argv)


if __name__ == "__main__":
    limit_blas_threads()  # before numpy loads
    sys.exit(main())
