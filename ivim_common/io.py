"""Reading and checking inputs, writing maps and JSON sidecars."""
import json
import os
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from . import fit, model
from .errors import InputError


# =============================================================================
# Viewer: a folder of fitted maps, with the DWI, b-values and mask behind them
# (used by ivim_view_fits.py; self-contained)
# =============================================================================

SIDECAR_NAME = "ivim_fitting.json"


@dataclass
class FitFolder:
    """Maps of one fit and, where found, the data they were fitted to.

    Attributes
    ----------
    name : str
        Name of the map the user opened (a key of ``maps``), e.g. 'Fivim'.
    path : str
        Path of that map.
    maps : dict of str -> ndarray, shape (nx, ny, nz)
        Every map found (float64; D, Dstar, FivimXDstar in mm²/s).
    zooms : tuple of float
        Voxel size (mm) along x, y, z.
    bvals : ndarray, shape (n_b,), or None
        b-values in s/mm².
    dwi : ndarray, shape (nx, ny, nz, n_b), or None
        Measured signal (None: map-only view).
    mask : ndarray of bool, shape (nx, ny, nz), or None
    sidecar : dict or None
        Contents of ivim_fitting.json.
    notes : list of str
        Things the user should know (inputs named by the sidecar but not found).
    """
    name: str
    path: str
    maps: dict
    zooms: tuple
    bvals: np.ndarray = None
    dwi: np.ndarray = None
    mask: np.ndarray = None
    sidecar: dict = None
    notes: list = field(default_factory=list)

    @property
    def shape(self):
        return self.maps[self.name].shape

    def has_model(self):
        """True when the four model parameter maps are all present."""
        return all(p in self.maps for p in model.PARAM_NAMES)

    def values(self, ijk):
        """Value of every map at voxel ``ijk`` (0-based x, y, z)."""
        return {name: float(data[ijk]) for name, data in self.maps.items()}

    def signal(self, ijk):
        """Measured signal at voxel ``ijk``, shape (n_b,), or None without a DWI."""
        return None if self.dwi is None else self.dwi[ijk]

    @property
    def region(self):
        """Voxels that were fitted: the mask, else where a parameter map is not 0.

        ivim_fitting.py writes 0 outside the mask and NaN where a fit failed.
        """
        if self.mask is not None:
            return self.mask
        names = [p for p in model.PARAM_NAMES if p in self.maps] or [self.name]
        return np.any([self.maps[n] != 0 for n in names], axis=0)

    def status(self, ijk):
        """'fitted', 'outside mask' or 'failed' for voxel ``ijk``."""
        if not self.region[ijk]:
            return "outside mask"
        values = self.values(ijk)
        if values.get("exception", 0) >= 0.5 or any(np.isnan(v) for v in values.values()):
            return "failed"
        return "fitted"


def load_fit_folder(map_path, dwi=None, bvals=None, mask=None, maps_dir=None):
    """Load a map, the other maps beside it and the inputs named by its sidecar.

    The sidecar ``ivim_fitting.json`` in the map's folder names the other maps, the DWI, the
    mask and holds the b-values.  Each argument given here overrides what the sidecar says.

    Parameters
    ----------
    map_path : str
        A map written by ivim_fitting.py (e.g. params_map/Fivim_map.nii.gz).
    dwi, bvals, mask : str, optional
        Paths of the 4-D DWI, the b-value text file (s/mm²) and the mask.
    maps_dir : str, optional
        Folder of the other maps (default: the map's folder).

    Returns
    -------
    FitFolder

    Raises
    ------
    InputError
        A file given here or a map is missing or unreadable, or the images do not match.
    """
    folder = os.path.dirname(os.path.abspath(map_path))
    sidecar = _read_sidecar(os.path.join(folder, SIDECAR_NAME))
    main_img = _load_nifti(map_path, 3)
    map_files = (sidecar or {}).get("maps") or {n: f"{n}_map.nii.gz" for n in fit.OUTPUT_NAMES}
    name = _map_name(map_path, map_files)
    paths = {n: os.path.join(maps_dir or folder, f) for n, f in map_files.items()}
    paths[name] = map_path  # the opened map, wherever the others are
    maps = {n: _image_data(main_img if n == name else _load_nifti(p, 3), p, main_img.shape)
            for n, p in paths.items() if n == name or os.path.isfile(p)}
    out = FitFolder(name=name, path=map_path, maps=maps, sidecar=sidecar,
                    zooms=tuple(float(z) for z in main_img.header.get_zooms()[:3]))

    dwi_path = dwi or _sidecar_input(sidecar, "dwi", out.notes)
    mask_path = mask or _sidecar_input(sidecar, "mask", out.notes)
    if bvals:
        out.bvals = _read_bvals(bvals)
    elif sidecar and sidecar.get("bvals"):
        out.bvals = np.asarray(sidecar["bvals"], dtype=float)
    if dwi_path:
        if out.bvals is None:
            raise InputError(f"{dwi_path}: no b-values for this DWI (no {SIDECAR_NAME} in "
                             f"{folder}; give the b-value file)")
        dwi_img = _load_nifti(dwi_path, 4)
        if dwi_img.shape[3] != len(out.bvals):
            raise InputError(f"{dwi_path}: {dwi_img.shape[3]} volumes but {len(out.bvals)} "
                             f"b-values (from {bvals or SIDECAR_NAME})")
        out.dwi = _image_data(dwi_img, dwi_path, main_img.shape)
    if mask_path:
        out.mask = _image_data(_load_nifti(mask_path, 3), mask_path, main_img.shape) > 0
    return out


def _read_sidecar(path):
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable JSON sidecar ({err})") from None


def _map_name(map_path, map_files):
    """The map's name: its key in the sidecar, else the file name without '_map.nii[.gz]'."""
    filename = os.path.basename(map_path)
    for name, other in map_files.items():
        if other == filename:
            return name
    for suffix in (".gz", ".nii", "_map"):
        filename = filename.removesuffix(suffix)
    return filename


def _sidecar_input(sidecar, key, notes):
    """Path of an input named by the sidecar, if it still exists (else a note, and None)."""
    entry = ((sidecar or {}).get("inputs") or {}).get(key)
    if not entry:
        return None
    for path in (entry.get("abspath"), entry.get("path")):
        if path and os.path.isfile(path):
            return path
    notes.append(f"{key} {entry.get('abspath') or entry.get('path')} (named in {SIDECAR_NAME}) "
                 "not found")
    return None


def _load_nifti(path, ndim):
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types for unreadable files
        raise InputError(f"{path}: not a readable NIfTI image ({err})") from None
    if len(img.shape) != ndim:
        raise InputError(f"{path}: expected a {ndim}-D image, got shape {img.shape}")
    return img


def _image_data(img, path, grid):
    """Float64 data of ``img``, checked against the map's grid (nx, ny, nz)."""
    if img.shape[:3] != tuple(grid):
        raise InputError(f"{path}: grid {img.shape[:3]} does not match the map's {tuple(grid)}")
    return img.get_fdata()


def _read_bvals(path):
    """b-values separated by spaces, tabs, commas or new lines (FSL .bval works)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return np.array(f.read().replace(",", " ").split(), dtype=float)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: not a text file of b-values ({err})") from None
