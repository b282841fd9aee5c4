"""Required SNR: the smallest SNR at which IVIM parameters are estimated within a given error.

For every true (f, D*, D) of the grid, the SNR is searched at which the mean absolute error
over the noise draws, 100·mean|p̂ − p|/p, is at most --max-error (10 %): for f·D* alone
(-condition FDstar) or for f, D*, D and f·D* (-condition all).  The search starts at -snr,
multiplies by 3 while the condition fails and halves while it holds, then bisects until the
bracket is within 1 SNR unit or 0.5 %; the result is the upper end (the condition holds there).
Every cell keeps its own seeded noise draws, scaled by σ = 600/SNR at every SNR tried (common
random numbers).  A cell that still fails at SNR 1e5 is reported as NaN (not reachable).
"""
import sys

from ivim_common import simu_cli
from ivim_common.resources import limit_blas_threads

EXAMPLE = """\
example (the original toolbox's README example, 26.5 h on 40 CPUs there; about 6 minutes on 2 cores here):
  ivim_simu_compute_required_snr.py -model one-step -ofolder required_snr -condition FDstar \\
      -bval 5,10,20,30,50,75,150,250,600,700,800 -F 0.01:10:0.30 -Dstar 3.0e-3:10:35e-3 -D 0.3e-3,1.5e-3
  ivim_simu_plot.py -input required_snr/sim_results_*.npz -oname required_snr/required_snr_plot

outputs: <ofolder>/sim_results_<yymmddHHMMSS>.npz (min_snr (nF, nDstar, nD), mean_err_at_min_snr
(4, nF, nDstar, nD) in the order f, Dstar, D, fDstar) and a .json sidecar with the settings.
With --shard K/N: sim_results_<yymmddHHMMSS>_shard<K>of<N>.npz, merged by ivim_simu_plot.py.
"""


def get_parser():
    return simu_cli.compute_parser("required_snr", "ivim_simu_compute_required_snr.py", __doc__, EXAMPLE)


def main(argv=None):
    return simu_cli.run_compute("required_snr", get_parser(), argv)


if __name__ == "__main__":
    limit_blas_threads()  # before numpy loads
    sys.exit(main())
