"""Reading and checking the inputs: b-values, NIfTI images (data type, memory, grid), the DWI
and its mask.  Every user mistake raises :class:`ivim_common.errors.InputError` with one line
that names the file and the problem."""
import contextlib
import dataclasses
import math
import os
import re
import zlib

import nibabel as nib
import numpy as np

from .. import model, resources
from ..errors import InputError
from .provenance import input_record


def check_readable(path, role):
    if not os.path.exists(path):
        raise InputError(f"{role} {path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{role} {path}: is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{role} {path}: permission denied")


def read_bvals(path):
    """Read b-values (s/mm²) written as one row or one column (FSL .bval included).

    Values may be separated by spaces, commas or tabs.  Repeated b-values and b = 0 are allowed.

    Returns
    -------
    ndarray, shape (n_b,)

    Raises
    ------
    InputError
        Missing or unreadable file, no values, several rows and columns, a non-numeric,
        non-finite or negative value.
    """
    check_readable(path, "b-value file")
    try:
        with open(path, encoding="utf-8-sig") as f:   # a byte-order mark (Windows editors) is not a value
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"b-value file {path}: cannot read it as text ({exc})") from None
    rows = [[t for t in re.split(r"[\s,]+", line) if t] for line in text.splitlines()]
    rows = [r for r in rows if r]
    if not rows:
        raise InputError(f"b-value file {path}: no b-values found")
    if len(rows) > 1 and any(len(r) > 1 for r in rows):
        raise InputError(f"b-value file {path}: expected one row or one column, found {len(rows)} rows "
                         f"of up to {max(len(r) for r in rows)} values")
    values = []
    for token in (t for r in rows for t in r):
        try:
            value = float(token)
        except ValueError:
            raise InputError(f"b-value file {path}: non-numeric b-value {token!r}") from None
        if not math.isfinite(value):
            raise InputError(f"b-value file {path}: non-finite b-value {token!r}")
        if value < 0:
            raise InputError(f"b-value file {path}: negative b-value {token}")
        values.append(value)
    bvals = np.array(values)
    return bvals


@contextlib.contextmanager
def _quiet_nibabel():
    """No log lines from nibabel's header checks: the one-line error says what is wrong."""
    logger = nib.imageglobals.logger
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def check_data_type(image, path, role):
    """Refuse data that are not real numbers: complex, RGB, boolean or other non-numeric types.

    Integer types keep working, their scaling (scl_slope, scl_inter) applied when read.

    Raises
    ------
    InputError
    """
    dtype = image.get_data_dtype()
    if dtype.names is not None or dtype.kind not in "iuf":
        kind = {"c": "complex", "b": "boolean"}.get(dtype.kind, "RGB" if dtype.names else "non-numeric")
        raise InputError(f"{role} {path}: {kind} data type {dtype.name if dtype.names is None else tuple(dtype.names)} "
                         "is not supported; give real-valued data (magnitude images, float or integer types)")


def check_memory(image, path, role, copies=1):
    """Refuse, from its header and before reading it, an image whose data cannot fit in memory.

    The data are read as float64: ``copies`` such arrays plus one array of the file's data type
    while it is read.  The memory available is MemAvailable, capped by the room left under the
    cgroup's memory limit (a batch job's ``--mem``), see
    :func:`ivim_common.resources.available_memory`.

    Raises
    ------
    InputError
        With the size needed, the size available and what to do.
    """
    n_values = math.prod(int(n) for n in image.shape)
    needed = n_values * (8 * copies + image.get_data_dtype().itemsize)
    available = resources.available_memory()
    if available is not None and needed > available:
        raise InputError(f"{role} {path}: image of shape {tuple(image.shape)} needs about "
                         f"{_gib(needed)} of memory, {_gib(available)} available: crop it to the region "
                         "to fit (e.g. fslroi), or run with more memory (e.g. sbatch --mem)")


def _gib(n_bytes):
    """Bytes in words: '1.5 GiB', '3.2 TiB'."""
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n_bytes /= 1024
        if n_bytes < 1024 or unit == "PiB":
            return f"{n_bytes:.3g} {unit}"


def load_nifti(path, role, copies=1):
    """Load a NIfTI-1/2 image and its data as float64.

    Parameters
    ----------
    path : str
    role : str
        What the file is, for error messages (e.g. ``"DWI"``, ``"mask"``).
    copies : int
        float64 copies of the data the caller will hold (see :func:`check_memory`).

    Returns
    -------
    image : nibabel.Nifti1Pair
    data : ndarray (float64)
    """
    check_readable(path, role)
    try:
        with _quiet_nibabel():
            image = nib.load(path)
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, OSError, EOFError,
            ValueError, zlib.error) as exc:
        raise InputError(f"{role} {path}: not a readable NIfTI image ({exc})") from None
    if not isinstance(image, nib.Nifti1Pair):  # Nifti1/2 images and pairs, not Analyze/MGH/...
        raise InputError(f"{role} {path}: not a NIfTI image ({type(image).__name__})")
    check_data_type(image, path, role)
    check_memory(image, path, role, copies)
    try:
        data = image.get_fdata(dtype=np.float64)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise InputError(f"{role} {path}: cannot read the image data ({exc})") from None
    except MemoryError:
        raise InputError(f"{role} {path}: out of memory reading its data (shape {tuple(image.shape)}): "
                         "crop it, or run with more memory") from None
    return image, data


def load_on_grid(path, role, ndim, reference=None, reference_role="map"):
    """:func:`load_nifti`, checked for its number of dimensions and, given a reference image,
    for the reference's grid: the same shape along x, y, z and the same affine."""
    image, data = load_nifti(path, role)
    if data.ndim != ndim:
        raise InputError(f"{role} {path}: expected a {ndim}-D image, got shape {data.shape}")
    if reference is not None:
        if data.shape[:3] != reference.shape[:3]:
            raise InputError(f"{role} {path}: shape {data.shape[:3]} differs from the {reference_role}'s "
                             f"{reference.shape[:3]}")
        if not np.allclose(image.affine, reference.affine):
            raise InputError(f"{role} {path}: affine (voxel-to-world matrix) differs from the "
                             f"{reference_role}'s")
    return image, data


@dataclasses.dataclass
class FitInputs:
    """Checked inputs of a voxel-wise fit.

    Attributes
    ----------
    bvals : ndarray (n_b,)
        b-values in s/mm².
    data : ndarray (x, y, z, n_b)
        The DWI (float64).
    selected : ndarray of bool (x, y, z)
        The voxels that are fitted (the mask, or the automatic selection).
    image : nibabel.Nifti1Pair
        The DWI (its affine and header are reused for the maps).
    records : dict
        ``{"dwi": ..., "bvals": ..., "mask": ... or None}``, see :func:`input_record`.
    selection : str
        How the voxels were selected, in words.
    """

    bvals: np.ndarray
    data: np.ndarray
    selected: np.ndarray
    image: object
    records: dict
    selection: str


def load_fit_inputs(dwi_path, bval_path, mask_path=None, approach="one-step"):
    """Load and cross-check a 4-D DWI, its b-values and an optional mask.

    Without a mask, every voxel whose signal is finite and positive in all volumes at the
    lowest b-value is selected.  There must be at least as many distinct b-values as the
    ``approach`` has free parameters (4 for one-step, 3 for two-step, where D is fixed).

    Returns
    -------
    FitInputs

    Raises
    ------
    InputError
        Any problem with a file or between files (one line naming the file).
    """
    bvals = read_bvals(bval_path)
    image, data = load_nifti(dwi_path, "DWI", copies=2)   # the volume and its selected voxels
    if data.ndim != 4:
        raise InputError(f"DWI {dwi_path}: expected a 4-D image (x, y, z, volume), got shape {data.shape}")
    if data.shape[3] != bvals.size:
        raise InputError(f"DWI {dwi_path} has {data.shape[3]} volumes but b-value file {bval_path} "
                         f"has {bvals.size} b-values")
    n_free = model.n_free(approach)
    n_distinct = np.unique(bvals).size
    if n_distinct < n_free:
        raise InputError(f"b-value file {bval_path}: {n_distinct} distinct b-values, {approach} needs at "
                         f"least {n_free}")
    if mask_path is None:
        lowest = data[..., bvals == bvals.min()]
        with np.errstate(invalid="ignore"):
            selected = (np.isfinite(lowest) & (lowest > 0)).all(axis=3)
        selection = f"no mask: voxels with finite, positive signal at the lowest b ({bvals.min():g} s/mm^2)"
        if not selected.any():
            raise InputError(f"DWI {dwi_path}: no voxel has a finite, positive signal at the lowest b-value")
    else:
        selected = _load_mask(mask_path, image)
        selection = f"mask {mask_path} (voxels > 0)"
    records = {"dwi": input_record(dwi_path), "bvals": input_record(bval_path),
               "mask": input_record(mask_path)}
    return FitInputs(bvals=bvals, data=data, selected=selected, image=image, records=records, selection=selection)


def _load_mask(path, dwi_image):
    """Boolean mask (values > 0) on the DWI's grid; errors if shape or affine differ or it is empty."""
    data = load_on_grid(path, "mask", 3, dwi_image, "DWI")[1]
    with np.errstate(invalid="ignore"):
        mask = data > 0
    if not mask.any():
        raise InputError(f"mask {path}: empty (no voxel > 0)")
    return mask
