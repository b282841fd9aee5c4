"""Entry points of the installed commands ``ivim_xxx.py`` (see ``[project.scripts]``).

pip installs each command as a launcher ``<venv>/bin/ivim_xxx.py``.  Python puts the launcher's
folder first on ``sys.path``, so ``from ivim_xxx import main`` there would import the launcher
itself instead of the top-level module ``ivim_xxx``.  These functions drop that folder from
``sys.path`` before importing the module and calling its ``main()``, and limit the BLAS threads
first (see :func:`ivim_common.resources.limit_blas_threads`).
"""
import importlib
import os
import sys

from .resources import limit_blas_threads


def _run(module):
    limit_blas_threads()
    launcher_dir = os.path.dirname(os.path.realpath(sys.argv[0]))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != launcher_dir]
    return importlib.import_module(module).main()


def ivim_fitting():
    return _run("ivim_fitting")


def ivim_view_fits():
    return _run("ivim_view_fits")


def ivim_simu_compute_error_nonoise():
    return _run("ivim_simu_compute_error_nonoise")


def ivim_simu_compute_error_noise():
    return _run("ivim_simu_compute_error_noise")


def ivim_simu_compute_required_snr():
    return _run("ivim_simu_compute_required_snr")


def ivim_simu_plot():
    return _run("ivim_simu_plot")


def ivim_simu_optimize_bvals():
    return _run("ivim_simu_optimize_bvals")


def ivim_toolbox():
    return _run("ivim_toolbox")
