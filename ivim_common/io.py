"""Reading and checking inputs, writing outputs: b-values, NIfTI images, maps, JSON sidecars.

Every user mistake raises :class:`ivim_common.errors.IvimError` (or a subclass) with one line
that names the file and the problem.  Outputs are checked before any work
(:func:`check_outputs`, :func:`check_output_folder`), written into a temporary folder and moved
into place at the end (:func:`staged_outputs`), so an interrupted or failed run leaves nothing
half-written.  The helpers :func:`sha256_file`, :func:`input_record`, :func:`provenance`,
:func:`write_json`, :func:`check_outputs`, :func:`check_output_folder` and
:func:`staged_outputs` know nothing about IVIM and serve every script; :func:`write_fit_folder`
and :func:`read_fit_folder` write and read a folder of maps.
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

from . import __version__, model
from .constants import FIT_SIDECAR, MAP_FILES, PARAMETERS
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
    argv : list of str or None
        The arguments the script parsed (without the program name); None from the Python API.
    """
    return {
        "tool": tool,
        "version": __version__,
        "command": None if argv is None else shlex.join([tool, *argv]),
        "cwd": os.getcwd(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def model_record(approach, bounds_version):
    """The sidecar fields of the model and its fit: equation, conversion, each map's unit and
    description, parameter names, approach, bounds version (one-step only) and the bounds in words."""
    return {
        "model": {"equation": model.EQUATION, "conversion": model.CONVERSION,
                  "units": {name: p.unit for name, p in PARAMETERS.items()},
                  "descriptions": {name: p.description for name, p in PARAMETERS.items()},
                  "parameters": list(model.PARAM_NAMES)},
        "approach": approach,
        "bounds_version": bounds_version if approach == "one-step" else None,
        "bounds": model.bounds_description(approach, bounds_version),
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
    image, data = load_nifti(dwi_path, "DWI")
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


# --------------------------------------------------------------------------- outputs

def check_output_folder(folder, force, names):
    """Refuse, before any work, an output folder that exists (without ``force``).

    Parameters
    ----------
    folder : str
    force : bool
        Allow an existing folder: its files named in ``names`` will be replaced.
    names : iterable of str
        Files the tool writes into the folder.

    Raises
    ------
    OutputExistsError
        The folder exists and ``force`` is false.
    IvimError
        As :func:`check_outputs`.
    """
    if os.path.isdir(folder) and not force:
        raise OutputExistsError(f"output folder {folder}: already exists (use --force to replace "
                                "the toolbox's files in it)")
    check_outputs([os.path.join(folder, name) for name in names], force=True)


def check_outputs(paths, force):
    """Refuse, before any work, output files that may not or cannot be written.

    Raises
    ------
    OutputExistsError
        A file exists and ``force`` is false.
    IvimError
        A path is given twice or is a folder, or its folder is not a writable folder and
        cannot be created as one.
    """
    seen = set()
    for path in paths:
        if os.path.abspath(path) in seen:
            raise IvimError(f"{path}: given twice as an output")
        seen.add(os.path.abspath(path))
        if os.path.isdir(path):
            raise IvimError(f"{path}: is a folder, cannot replace it")
        if os.path.lexists(path) and not force:
            raise OutputExistsError(f"{path}: already exists (use --force to replace it)")
        folder = os.path.dirname(path) or os.curdir
        existing = _existing_ancestor(folder)
        if not os.path.isdir(existing):
            raise IvimError(f"output folder {folder}: {existing} exists and is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise IvimError(f"output folder {folder}: cannot write in {existing} (permission denied)")


def _existing_ancestor(folder):
    """``folder`` (absolute) if it exists, else its nearest existing parent."""
    folder = os.path.abspath(folder)
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    return folder


@contextlib.contextmanager
def staged_outputs(paths):
    """Yield ``{path: temporary path}``; on success move every file into place.

    The files are written into a hidden temporary folder per destination folder: inside the
    destination when it exists (so only that folder must be writable; each file then replaces
    its namesake and nothing else is touched), else in its nearest existing parent, and the
    new folder is created by renaming the temporary one (it appears complete or not at all).
    On any exception (Ctrl-C included) the temporary folders are removed and the destinations
    are left as they were.

    Raises
    ------
    IvimError
        A file could not be written or moved (disk full, permissions, ...).
    """
    folders = {path: os.path.dirname(os.path.abspath(path)) for path in paths}
    stages = {}
    try:
        for folder in dict.fromkeys(folders.values()):
            stages[folder] = tempfile.mkdtemp(prefix=".ivim_", suffix=".tmp", dir=_existing_ancestor(folder))
        yield {path: os.path.join(stages[folder], os.path.basename(path)) for path, folder in folders.items()}
        for folder, stage in stages.items():
            if os.path.isdir(folder):
                for name in sorted(os.listdir(stage)):
                    os.replace(os.path.join(stage, name), os.path.join(folder, name))
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(stage, 0o777 & ~umask)  # mkdtemp's 0700 is for the scratch stage only
                os.makedirs(os.path.dirname(folder), exist_ok=True)
                os.rename(stage, folder)
    except OSError as exc:
        shown = ", ".join(dict.fromkeys(os.path.dirname(path) or os.curdir for path in paths))
        raise IvimError(f"output folder {shown}: cannot write in it ({exc})") from None
    finally:
        for stage in stages.values():
            shutil.rmtree(stage, ignore_errors=True)


def write_map(path, volume, reference):
    """Write a 3-D map as a float32 NIfTI image (NaN stays NaN).

    Parameters
    ----------
    path : str
        Destination (``.nii`` or ``.nii.gz``).
    volume : ndarray (x, y, z)
    reference : nibabel image or ndarray (4, 4)
        The image whose affine, qform/sform codes and spatial unit are kept (the DWI; its data
        type is not: the original toolbox inherited an int8 mask's), or an affine alone.
    """
    affine = np.asarray(getattr(reference, "affine", reference), dtype=float)
    image = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine)
    image.header.set_data_dtype(np.float32)
    header = getattr(reference, "header", None)
    if header is not None:
        qcode, scode = int(header["qform_code"]), int(header["sform_code"])
        if qcode or scode:
            image.set_qform(affine, code=qcode)
            image.set_sform(affine, code=scode)
        image.header.set_xyzt_units(xyz=header.get_xyzt_units()[0])
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
        ``{name: {"median": m, "iqr": [q25, q75]}}`` over the values that are not NaN (None
        when there is none).
    """
    out = {}
    for name, values in maps.items():
        values = values[fitted]
        values = values[~np.isnan(values)]     # e.g. an SD map: NaN where a parameter is at a bound
        if values.size:
            q25, q50, q75 = np.percentile(values, [25, 50, 75])
            out[name] = {"median": float(q50), "iqr": [float(q25), float(q75)]}
        else:
            out[name] = {"median": None, "iqr": [None, None]}
    return out


def read_sidecar(path):
    """The JSON sidecar at ``path``, or None where there is none."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable JSON sidecar ({err})") from None


def write_fit_folder(folder, volumes, reference, sidecar, force):
    """Write the maps of a fit (float32 NIfTI, see :func:`write_map`) and their sidecar
    ``ivim_fitting.json`` into ``folder``, complete or not at all.

    Parameters
    ----------
    folder : str
    volumes : dict of str -> ndarray (x, y, z)
        Maps named as the keys of MAP_FILES (0 outside the fitted voxels, NaN where failed).
    reference : nibabel image or ndarray (4, 4)
        See :func:`write_map`.
    sidecar : dict
    force : bool
        Allow an existing folder (its toolbox files are replaced, nothing else is touched).
    """
    check_output_folder(folder, force, [*MAP_FILES.values(), FIT_SIDECAR])
    paths = {name: os.path.join(folder, MAP_FILES[name]) for name in volumes}
    sidecar_path = os.path.join(folder, FIT_SIDECAR)
    with staged_outputs([*paths.values(), sidecar_path]) as tmp:
        for name, path in paths.items():
            write_map(tmp[path], volumes[name], reference)
        write_json(tmp[sidecar_path], sidecar)


def read_fit_folder(folder):
    """The maps (float64) and the sidecar (or None) of a folder of maps.

    The sidecar names the map files; without one, the files of MAP_FILES that exist are read.
    The S0 map, at least, must be there, and every map on its grid.

    Returns
    -------
    volumes : dict of str -> ndarray (x, y, z)
    sidecar : dict or None
    """
    if not os.path.isdir(folder):
        raise InputError(f"fit folder {folder}: no such folder")
    sidecar = read_sidecar(os.path.join(folder, FIT_SIDECAR))
    files = (sidecar or {}).get("maps") or MAP_FILES
    if not os.path.isfile(os.path.join(folder, files.get("S0", ""))):
        raise InputError(f"fit folder {folder}: no S0 map ({files.get('S0')})")
    reference = load_on_grid(os.path.join(folder, files["S0"]), "S0 map", 3)[0]
    volumes = {name: load_on_grid(os.path.join(folder, f), f"{name} map", 3, reference)[1]
               for name, f in files.items() if os.path.isfile(os.path.join(folder, f))}
    return volumes, sidecar
