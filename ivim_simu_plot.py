"""Figures of the simulation results (error without/with noise, required SNR).

Recognises the kind of each sim_results_*.npz and draws the original toolbox's figures, one per
true D (index i): <oname>_sim_D{i} (mean |error|), <oname>_sim_STD_D{i} (its SD, with noise),
<oname>_true_D{i} (true values), <oname>_minSNR_D{i} (required SNR, log colour scale) and
<oname>_params_D{i} (errors at the required SNR).  Shard files of one run are merged first;
--merged writes the merged result.
"""
import sys

from ivim_common import simu_cli
from ivim_common.resources import limit_blas_threads

EXAMPLE = """\
examples:
  ivim_simu_plot.py -input required_snr/sim_results_240101120000.npz -oname required_snr/required_snr_plot
  # shards of a job array: merge, keep the merged result, and plot as PDF
  ivim_simu_plot.py -input out/sim_results_*_shard*of8.npz --merged out/merged.npz -oname out/plot --format pdf
"""


def get_parser():
    return simu_cli.plot_parser("ivim_simu_plot.py", __doc__, EXAMPLE)


def main(argv=None):
    return simu_cli.run_plot(get_parser(), argv)


if __name__ == "__main__":
    limit_blas_threads()  # before numpy loads
    sys.exit(main())
