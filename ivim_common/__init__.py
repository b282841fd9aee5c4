"""ivim-toolbox: voxel-wise IVIM fitting and Monte Carlo design tools (successor of Lévy et al., MRM 2020)."""
import os

__version__ = "1.0.0.dev0"

# The fast engine's matrix products are tiny, so BLAS threads only add overhead: with OpenBLAS's
# default threads a 10^5-voxel fit took 18.4 s instead of 12.0 s on 2 cores, and worker
# processes each running threads fight over the cores.  Set before numpy loads (and inherited by
# the worker processes); a value the user set wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
