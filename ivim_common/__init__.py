"""ivim-toolbox: voxel-wise IVIM fitting and Monte Carlo design tools (successor of Lévy et al., MRM 2020).

The public API is :class:`IvimModel` and :class:`IvimFit` (see :mod:`ivim_common.api`)::

    from ivim_common import IvimModel
    fit = IvimModel(bvals).fit(data, mask)      # data (..., n_b) -> fit.S0, fit.D, fit.f, fit.Dstar

They are imported on first use, so that importing the package (as every script's ``--help``
does) does not import numpy.
"""
from .version import __version__

__all__ = ["IvimModel", "IvimFit", "__version__"]


def __getattr__(name):
    if name in ("IvimModel", "IvimFit"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
