"""Reading and checking inputs, writing outputs: b-values, NIfTI images, maps, JSON sidecars.

Every user mistake raises :class:`ivim_common.errors.IvimError` (or a subclass) with one line
that names the file and the problem.  Outputs are checked before any work
(:func:`check_output_folder`), written into a temporary folder beside the destination and moved
into place at the end (:func:`staged_output`), so an interrupted or failed run leaves nothing
half-written.  The helpers :func:`sha256_file`, :func:`input_record`, :func:`provenance`,
:func:`write_json`, :func:`check_output_folder` and :func:`staged_output` know nothing about
IVIM and serve every script.
"""
import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import tempfile
import zlib

import nibabel as nib
import numpy as np

from . import __version__
from .errors import InputError, IvimError, OutputExistsError


# --------------------------------------------------------------------------- provenance

def sha256_file(path):
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_record(path):
    """``{"path": as given, "abspath": ..., "sha256": ...}`` of an input file, or None for None."""
    if path is None:
        return None
    return {"path": str(path), "abspath": os.path.abspath(path), "sha256": sha256_file(path)}


def provenance(tool, argv):
    """The fields every sidecar starts with: tool, version, command line, working folder, date.

    Parameters
    ----------
    tool : str
        Script name, e.g. ``"ivim_fitting.py"``.
    argv : list of str
        The arguments the script parsed (without the program name).
    """
    return {
        "tool": tool,
        "version": __version__,
        "command": shlex.join([tool, *argv]),
        "cwd": os.getcwd(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _jsonable(obj):
    """Plain Python types for json: numpy scalars/arrays converted, NaN/Inf become null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, obj):
    """Write ``obj`` as indented, strictly valid JSON (NaN and Inf written as null)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(obj), f, indent=2, allow_nan=False)
        f.write("\n")


# --------------------------------------------------------------------------- inputs

def _check_readable(path, role):
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
    _check_readable(path, "b-value file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"b-value file {path}: cannot read it as text ({exc})") from None
    rows = [re.split(r"[\s,]+", line.strip(", \t")) for line in text.splitlines() if line.strip(", \t")]
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


def load_nifti(path, role):
    """Load a NIfTI-1/2 image and its data as float64.

    Parameters
    ----------
    path : str
    role : str
        What the file is, for error messages (e.g. ``"DWI"``, ``"mask"``).

    Returns
    -------
    image : nibabel.Nifti1Pair
    data : ndarray (float64)
    """
    _check_readable(path, role)
    try:
        image = nib.load(path)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise InputError(f"{role} {path}: not a readable NIfTI image ({exc})") from None
    if not isinstance(image, nib.Nifti1Pair):  # Nifti1/2 images and pairs, not Analyze/MGH/...
        raise InputError(f"{role} {path}: not a NIfTI image ({type(image).__name__})")
    try:
        data = image.get_fdata(dtype=np.float64)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise InputError(f"{role} {path}: cannot read the image data ({exc})") from None
    return image, data


@dataclasses.dataclass
class FitInputs:
    """Checked inputs of a voxel-wise fit.

    Attributes
    ----------
    bvals : ndarray (n_b,)
        b-values in s/mm².
    signal : ndarray (n_voxels, n_b)
        Signal of the selected voxels, in C order of the volume.
    voxel_ids : ndarray of int (n_voxels,)
        Flat (C-order) indices of the selected voxels in the 3-D grid.
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
    signal: np.ndarray
    voxel_ids: np.ndarray
    selected: np.ndarray
    image: object
    records: dict
    selection: str


def load_fit_inputs(dwi_path, bval_path, mask_path=None):
    """Load and cross-check a 4-D DWI, its b-values and an optional mask.

    Without a mask, every voxel whose signal is finite and positive in all volumes at the
    lowest b-value is selected.

    Returns
    -------
    FitInputs

    Raises
    ------
    InputError
        Any problem with a file or between files (one line naming the file).
    """
    bvals = read_bvals(bval_path)
    image, data = load_nifti(dwi_path, "DWI")
    if data.ndim != 4:
        raise InputError(f"DWI {dwi_path}: expected a 4-D image (x, y, z, volume), got shape {data.shape}")
    if data.shape[3] != bvals.size:
        raise InputError(f"DWI {dwi_path} has {data.shape[3]} volumes but b-value file {bval_path} "
                         f"has {bvals.size} b-values")
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
    return FitInputs(bvals=bvals, signal=data[selected], voxel_ids=np.flatnonzero(selected),
                     selected=selected, image=image, records=records, selection=selection)


def _load_mask(path, dwi_image):
    """Boolean mask (values > 0) on the DWI's grid; errors if shape or affine differ or it is empty."""
    image, data = load_nifti(path, "mask")
    if data.shape != dwi_image.shape[:3]:
        raise InputError(f"mask {path}: shape {data.shape} differs from the DWI's {dwi_image.shape[:3]}")
    if not np.allclose(image.affine, dwi_image.affine):
        raise InputError(f"mask {path}: affine (voxel-to-world matrix) differs from the DWI's")
    with np.errstate(invalid="ignore"):
        mask = data > 0
    if not mask.any():
        raise InputError(f"mask {path}: empty (no voxel > 0)")
    return mask


# --------------------------------------------------------------------------- outputs

def check_output_folder(folder, force, names=()):
    """Refuse an output folder before any work is done.

    Parameters
    ----------
    folder : str
    force : bool
        Allow an existing folder (its files named in ``names`` will be replaced).
    names : iterable of str
        Files the tool writes into the folder; with ``force`` none of them may be a folder.

    Raises
    ------
    OutputExistsError
        The folder exists and ``force`` is false.
    IvimError
        The path is a file, a name to write is a folder, or nothing can be created there.
    """
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise IvimError(f"output folder {folder}: exists and is not a folder")
    if os.path.isdir(folder):
        if not force:
            raise OutputExistsError(f"output folder {folder}: already exists (use --force to replace "
                                    "the toolbox's files in it)")
        for name in names:
            if os.path.isdir(os.path.join(folder, name)):
                raise IvimError(f"output folder {folder}: {name} is a folder, cannot replace it")
    ancestor = os.path.dirname(os.path.abspath(folder))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not (os.path.isdir(ancestor) and os.access(ancestor, os.W_OK | os.X_OK)):
        raise IvimError(f"output folder {folder}: cannot create it in {ancestor} (not a writable folder)")


@contextlib.contextmanager
def staged_output(folder):
    """Yield a temporary folder beside ``folder``; on success move its files into ``folder``.

    A new ``folder`` is created by renaming the temporary one; into an existing ``folder``
    each written file replaces its namesake and nothing else is touched.  On any exception
    (Ctrl-C included) the temporary folder is removed and ``folder`` is left as it was.

    Raises
    ------
    IvimError
        A file could not be written or moved (disk full, permissions, ...).
    """
    parent = os.path.dirname(os.path.abspath(folder))
    tmp = None
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(folder))}.", suffix=".tmp",
                               dir=parent)
        yield tmp
        if os.path.isdir(folder):
            for name in sorted(os.listdir(tmp)):
                os.replace(os.path.join(tmp, name), os.path.join(folder, name))
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 is for the scratch stage only
            os.rename(tmp, folder)
    except OSError as exc:
        raise IvimError(f"output folder {folder}: cannot write it ({exc})") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def write_map(path, values, selected, reference):
    """Write per-voxel values as a float32 NIfTI on the reference's grid (0 outside ``selected``).

    Parameters
    ----------
    path : str
        Destination (``.nii`` or ``.nii.gz``).
    values : ndarray (n_voxels,)
        Values of the selected voxels, in C order (NaN stays NaN).
    selected : ndarray of bool (x, y, z)
    reference : nibabel.Nifti1Pair
        The image whose affine, qform/sform codes and spatial unit are kept (the DWI);
        its data type is not (the original toolbox inherited an int8 mask's).
    """
    volume = np.zeros(selected.shape, dtype=np.float32)
    volume[selected] = values
    image = nib.Nifti1Image(volume, reference.affine)
    image.header.set_data_dtype(np.float32)
    qcode, scode = int(reference.header["qform_code"]), int(reference.header["sform_code"])
    if qcode or scode:
        image.set_qform(reference.affine, code=qcode)
        image.set_sform(reference.affine, code=scode)
    image.header.set_xyzt_units(xyz=reference.header.get_xyzt_units()[0])
    nib.save(image, path)


def median_iqr(maps, fitted):
    """Median and inter-quartile range of each map over the fitted voxels.

    Parameters
    ----------
    maps : dict of ndarray (n_voxels,)
    fitted : ndarray of bool (n_voxels,)

    Returns
    -------
    dict
        ``{name: {"median": m, "iqr": [q25, q75]}}`` (None when no voxel was fitted).
    """
    out = {}
    for name, values in maps.items():
        if fitted.any():
            q25, q50, q75 = np.percentile(values[fitted], [25, 50, 75])
            out[name] = {"median": float(q50), "iqr": [float(q25), float(q75)]}
        else:
            out[name] = {"median": None, "iqr": [None, None]}
    return out
