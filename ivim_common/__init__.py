"""ivim-toolbox: voxel-wise IVIM fitting and Monte Carlo design tools (successor of Lévy et al., MRM 2020)."""
__version__ = "1.0.0.dev0"
