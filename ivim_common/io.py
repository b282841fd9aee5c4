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
import errno
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import socket
import tempfile
import zlib

import nibabel as nib
import numpy as np

from . import __version__, model, resources
from .constants import FIT_SIDECAR, MAP_FILES, PARAMETERS, SIMULATION_CELL_ARRAYS, SIMULATION_KINDS, parameters
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


def model_record(approach, bounds_version, bounds=None, dstar_convention="toolbox", bval_threshold=None):
    """The sidecar fields of the model and its fit: equation, conversion, each map's unit and
    description, parameter names, approach, bounds version (one-step only), the user's bounds,
    the bounds in words and the D* convention of the written maps."""
    descriptions = {name: p.description for name, p in parameters(dstar_convention).items()}
    return {
        "model": {"equation": model.EQUATION, "conversion": model.CONVERSION,
                  "units": {name: p.unit for name, p in PARAMETERS.items()},
                  "descriptions": descriptions,
                  "parameters": list(model.PARAM_NAMES)},
        "approach": approach,
        "bounds_version": bounds_version if approach == "one-step" else None,
        "bounds_overrides": bounds or None,
        "bounds": model.bounds_description(approach, bounds_version, bounds, dstar_convention, bval_threshold),
        "bval_threshold": model.settings(approach, bounds_version, bval_threshold)["bval_threshold"],
        "dstar_convention": dstar_convention,
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
    _check_readable(path, role)
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
def staged_outputs(paths, force=True):
    """Yield ``{path: temporary path}``; on success move every file into place.

    The files are written into a hidden temporary folder per destination folder: inside the
    destination when it exists (so only that folder must be writable; each file then replaces
    its namesake and nothing else is touched), else in its nearest existing parent, and the
    new folder is created by renaming the temporary one (it appears complete or not at all).
    Should another run create the folder meanwhile (the shards of a job array writing into one
    new folder), the files are moved into it instead.  Without ``force``, a file that another
    run wrote meanwhile is not replaced: the run is refused and writes nothing.
    On any exception (Ctrl-C included) the temporary folders are removed and the destinations
    are left as they were.

    Raises
    ------
    OutputExistsError
        Without ``force``: a destination file appeared meanwhile.
    IvimError
        A file could not be written or moved (disk full, permissions, ...).
    """
    folders = {path: os.path.dirname(os.path.abspath(path)) for path in paths}
    stages = {}
    try:
        for folder in dict.fromkeys(folders.values()):
            stages[folder] = tempfile.mkdtemp(prefix=".ivim_", suffix=".tmp", dir=_existing_ancestor(folder))
        yield {path: os.path.join(stages[folder], os.path.basename(path)) for path, folder in folders.items()}
        if not force:
            _refuse_taken(stages)
        for folder, stage in stages.items():
            if not os.path.isdir(folder):
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(stage, 0o777 & ~umask)  # mkdtemp's 0700 is for the scratch stage only
                os.makedirs(os.path.dirname(folder), exist_ok=True)
                try:
                    os.rename(stage, folder)
                    continue
                except OSError as exc:     # the folder appeared meanwhile: move the files into it
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not os.path.isdir(folder):
                        raise
                    if not force:
                        _refuse_taken({folder: stage})
            for name in sorted(os.listdir(stage)):
                os.replace(os.path.join(stage, name), os.path.join(folder, name))
    except OSError as exc:
        shown = ", ".join(dict.fromkeys(os.path.dirname(path) or os.curdir for path in paths))
        raise IvimError(f"output folder {shown}: cannot write in it ({exc})") from None
    finally:
        for stage in stages.values():
            shutil.rmtree(stage, ignore_errors=True)


def _refuse_taken(stages):
    """OutputExistsError if a file staged for ``{folder: stage}`` now exists in its folder."""
    for folder, stage in stages.items():
        for name in sorted(os.listdir(stage)):
            if os.path.lexists(os.path.join(folder, name)):
                raise OutputExistsError(f"{os.path.join(folder, name)}: written meanwhile by another run; "
                                        "nothing written (use --force to replace it)")


LOCK_SUFFIX = ".ivim-lock"


@contextlib.contextmanager
def output_folder_lock(folder):
    """Hold an exclusive lock on an output folder for the block: a second run into the same
    folder at the same time is refused (one line), so a folder never mixes two runs' files.

    The lock is a file ``.<folder name>.ivim-lock`` created with O_EXCL in the folder's parent
    (inside the folder when only the folder is writable), holding the process id and host, and
    removed at the end.  A lock left by a killed run (SIGKILL) on this host is taken over.

    Raises
    ------
    OutputExistsError
        Another live run holds the lock.
    """
    path = _lock_path(folder)
    if path is None:               # nowhere to write it: check_output_folder says why
        yield
        return
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            if not _remove_if_stale(path):
                raise OutputExistsError(f"output folder {folder}: another run ({_read_lock(path)}) is writing "
                                        f"into it; wait for it to end, or remove {path} if that run is "
                                        "no longer running") from None
        except OSError:            # not writable: check_output_folder says why
            yield
            return
    else:
        raise OutputExistsError(f"output folder {folder}: could not take its lock {path}")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        yield
    finally:
        with contextlib.suppress(OSError):
            if _read_lock(path) == me:
                os.unlink(path)


def _lock_path(folder):
    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    name = "." + os.path.basename(folder) + LOCK_SUFFIX
    if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
        return os.path.join(parent, name)
    if os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
        return os.path.join(folder, name)
    ancestor = _existing_ancestor(parent)
    if os.path.isdir(ancestor) and os.access(ancestor, os.W_OK | os.X_OK):
        return os.path.join(ancestor, "." + os.path.relpath(folder, ancestor).replace(os.sep, "%") + LOCK_SUFFIX)
    return None


def _read_lock(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _remove_if_stale(path):
    """Remove a lock whose process (on this host) is gone; True if removed (or gone)."""
    text = _read_lock(path)
    try:
        pid, host = text.split()
        pid = int(pid)
    except ValueError:
        return False               # being written, or not ours: not stale
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        pass
    except PermissionError:
        return False
    with contextlib.suppress(FileNotFoundError):
        if _read_lock(path) == text:
            os.unlink(path)
    return True


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
        Allow an existing folder (its toolbox files are replaced, a replaced run's maps that this
        run does not write are removed, nothing else is touched).
    """
    check_output_folder(folder, force, [*MAP_FILES.values(), FIT_SIDECAR])
    paths = {name: os.path.join(folder, MAP_FILES[name]) for name in volumes}
    sidecar_path = os.path.join(folder, FIT_SIDECAR)
    with staged_outputs([*paths.values(), sidecar_path], force) as tmp:
        for name, path in paths.items():
            write_map(tmp[path], volumes[name], reference)
        write_json(tmp[sidecar_path], sidecar)
    for name, filename in MAP_FILES.items():     # a replaced run's maps that this one does not write
        if name not in volumes and os.path.lexists(os.path.join(folder, filename)):
            os.remove(os.path.join(folder, filename))


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


# --------------------------------------------------------------------------- directions

B_TOLERANCE_FRACTION, B_TOLERANCE_MIN = 0.02, 1.0   # default --b-tolerance: 2 % of b, >= 1 s/mm²
SAME_DIRECTION_COS = 0.999                           # |cos| of two vectors of one direction (2.6°)
UNIT_NORM_TOLERANCE = 0.02                           # | |g| - 1 | allowed on a non-zero b


def find_beside(dwi_path, ext):
    """The ``.bval``/``.bvec`` file beside a DWI (``ext`` 'bval' or 'bvec'), or None.

    BIDS and FSL name it after the image (``sub-01_dwi.nii.gz`` -> ``sub-01_dwi.bval``); FSL's
    dtifit folders call it ``bvals``/``bvecs``.  The first that exists is returned.
    """
    folder, name = os.path.split(dwi_path)
    stem = re.sub(r"\.nii(\.gz)?$", "", name)
    for candidate in (f"{stem}.{ext}", f"{ext}s"):
        path = os.path.join(folder, candidate)
        if os.path.exists(path):
            return path
    return None


def b_shells(bvals, tolerance=None):
    """The b-value of each volume's shell: b-values within the tolerance of each other are one
    b-value (their mean), and those within it of 0 are 0.

    Parameters
    ----------
    bvals : array_like (n,)
    tolerance : float, str or None
        s/mm², or a percentage of b such as '2%'; None: 2 % of b, at least 1 s/mm².

    Returns
    -------
    ndarray (n,)

    Examples
    --------
    >>> b_shells([0, 0.5, 5, 10, 15, 20, 795, 800, 805]).tolist()
    [0.0, 0.0, 5.0, 10.0, 15.0, 20.0, 800.0, 800.0, 800.0]
    """
    b = np.asarray(bvals, dtype=float)

    def tol(value):
        if tolerance is None:
            return max(B_TOLERANCE_FRACTION * value, B_TOLERANCE_MIN)
        if isinstance(tolerance, str):
            return float(tolerance.rstrip("%")) / 100 * value
        return float(tolerance)

    order = np.argsort(b, kind="stable")
    shells, groups = np.empty_like(b), [[order[0]]] if b.size else []
    for i in order[1:]:
        first = b[groups[-1][0]]
        (groups[-1].append(i) if b[i] - first <= tol(max(first, b[i])) else groups.append([i]))
    for members in groups:
        value = b[members].mean()
        shells[members] = 0.0 if b[members].min() <= tol(0.0) else value
    return shells


def read_bvecs(path, bvals, tolerance=None):
    """Read an FSL gradient table (3 rows, one column per volume) and check it against bvals.

    Returns
    -------
    ndarray (3, n_volumes)

    Raises
    ------
    InputError
        Not 3 rows of numbers, a column count different from the b-values', a zero or
        non-unit vector on a non-zero b.
    """
    _check_readable(path, "b-vector file")
    try:
        with open(path, encoding="utf-8") as f:
            rows = [re.split(r"[\s,]+", line.strip(", \t\r\n")) for line in f if line.strip(", \t\r\n")]
        bvecs = np.array([[float(v) for v in row] for row in rows])
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"b-vector file {path}: cannot read it as rows of numbers ({exc})") from None
    if bvecs.ndim == 2 and bvecs.shape[1] == 3 and bvecs.shape[0] != 3:
        bvecs = bvecs.T                          # one vector per row (MRtrix-like): accepted too
    if bvecs.ndim != 2 or bvecs.shape[0] != 3:
        raise InputError(f"b-vector file {path}: expected 3 rows (x, y, z), one column per volume")
    if bvecs.shape[1] != len(bvals):
        raise InputError(f"b-vector file {path}: {bvecs.shape[1]} vectors but {len(bvals)} b-values/volumes")
    if not np.isfinite(bvecs).all():
        raise InputError(f"b-vector file {path}: non-finite value")
    norms = np.linalg.norm(bvecs, axis=0)
    bad = (b_shells(bvals, tolerance) > 0) & (np.abs(norms - 1) > UNIT_NORM_TOLERANCE)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"b-vector file {path}: volume {i} (b = {bvals[i]:g}) has a "
                         f"{'zero' if norms[i] == 0 else f'non-unit (norm {norms[i]:.3g})'} vector")
    return bvecs


def direction_labels(bvecs, shells):
    """Direction of each volume (0, 1, ...; -1 at b = 0) and the directions' unit vectors:
    vectors within 2.6° of each other, or of each other's opposite, are one direction."""
    labels, units = np.full(len(shells), -1), []
    for i in np.flatnonzero(np.asarray(shells) > 0):
        g = bvecs[:, i] / np.linalg.norm(bvecs[:, i])
        match = [k for k, u in enumerate(units) if abs(u @ g) >= SAME_DIRECTION_COS]
        if match:
            labels[i] = match[0]
        else:
            labels[i] = len(units)
            units.append(g)
    return labels, np.array(units).reshape(-1, 3)


def _geometric_mean(data, axis=-1):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(np.log(np.where(data > 0, data, np.nan)).mean(axis=axis))


def direction_sets(data, bvals, bvecs, mode, tolerance=None, n_free=4, bvec_path="b-vector file"):
    """The signal to fit for ``--directions``: a list of ``(label, bvals, data, record)``.

    'all': the volumes as they are (one set, label None).  'trace': one set ('trace') whose
    volume at each shell is the geometric mean over its directions of each direction's
    geometric mean over its repeats (for IVIM with isotropic perfusion exactly
    S0·e^(-b·mean D)·(f·e^(-b·D*) + 1 - f) where every direction is there); a shell with some
    directions only is averaged over those it has (listed in the record), one with a single
    direction is an error.  'each': one set per direction ('dir1', ...), the b = 0 volumes with
    that direction's volumes.  b-values are grouped by :func:`b_shells`.  Non-positive samples
    make the combined sample NaN (the voxel is then marked failed).
    """
    if mode == "all":
        return [(None, np.asarray(bvals, dtype=float), data, {"mode": "all"})]
    shells = b_shells(bvals, tolerance)
    labels, units = direction_labels(bvecs, shells)
    tol_text = "2% of b, at least 1 s/mm^2" if tolerance is None else str(tolerance)
    record = {"mode": mode, "b_tolerance": tol_text,
              "directions": units.round(6).tolist(), "shells": sorted(set(shells.tolist()))}
    zero = shells == 0
    if mode == "trace":
        out_b, volumes, partial = [], [], {}
        if zero.any():
            out_b.append(0.0)
            volumes.append(_geometric_mean(data[..., zero]))
        for b in sorted(set(shells[~zero].tolist())):
            here = [k for k in range(len(units)) if ((shells == b) & (labels == k)).any()]
            if len(here) < 2:
                raise InputError(f"{bvec_path}: --directions trace, b = {b:g} has a single direction "
                                 "(the trace needs at least 2)")
            if len(here) < len(units):
                partial[f"{b:g}"] = len(here)
            per_dir = [_geometric_mean(data[..., (shells == b) & (labels == k)]) for k in here]
            out_b.append(b)
            volumes.append(_geometric_mean(np.stack(per_dir, axis=-1)))
        record["shells_with_some_directions_only"] = partial or None
        return [("trace", np.array(out_b), np.stack(volumes, axis=-1), record)]
    sets = []
    for k, unit in enumerate(units):
        pick = zero | (labels == k)
        if np.unique(shells[pick]).size < n_free:
            raise InputError(f"{bvec_path}: --directions each, direction {k + 1} ({unit.round(3).tolist()}) "
                             f"has {np.unique(shells[pick]).size} distinct b-values with b = 0, the fit needs "
                             f"at least {n_free}")
        sets.append((f"dir{k + 1}", shells[pick], data[..., pick],
                     {**record, "direction": unit.round(6).tolist(), "direction_index": k + 1}))
    return sets


# --------------------------------------------------------------------------- BIDS derivatives

BIDS_PARAM = {"S0": "S0", "D": "D", "Fivim": "f", "Dstar": "Dstar", "FivimXDstar": "fDstar",
              "AIC": "AIC", "R2": "R2", "exception": "exception"}
BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/slevyrosetti/ivim-toolbox"
MODEL_URL = "https://doi.org/10.1002/mrm.28195"


def bids_source(dwi_path):
    """``(folder parts, source entities)`` of a BIDS-named DWI, e.g. ``sub-01_ses-2_acq-ivim_dwi.nii.gz``
    -> ``(["sub-01", "ses-2", "dwi"], "sub-01_ses-2_acq-ivim")``; None if the name has no ``sub-``."""
    name = re.sub(r"\.nii(\.gz)?$", "", os.path.basename(dwi_path))
    parts = name.split("_")
    if not parts[0].startswith("sub-") or len(parts[0]) <= 4:
        return None
    if "-" not in parts[-1]:
        parts = parts[:-1]                                  # the suffix (dwi)
    entities = [p for p in parts if re.fullmatch(r"[A-Za-z]+-[A-Za-z0-9]+", p)]
    folders = [entities[0]] + [p for p in entities[1:2] if p.startswith("ses-")] + ["dwi"]
    return folders, "_".join(entities)


def bids_param(name):
    """The ``param-`` label of a map: BIDS_PARAM's, or for the trust maps the base map's label
    with the rest in camel case (``Fivim_sd`` -> ``fSd``, ``model_choice`` -> ``modelChoice``)."""
    base, _, rest = name.partition("_")
    return BIDS_PARAM.get(base, base) + "".join(part.capitalize() for part in rest.split("_"))


def bids_paths(root, dwi_path, desc=None):
    """``{map name: path}`` of every BEP016 map a fit of a DWI may write under ``root``
    (``.nii.gz``; the JSON sidecar of each is beside it, same name)."""
    folders, entities = bids_source(dwi_path)
    base = os.path.join(root, *folders, f"{entities}_model-ivim" + (f"_desc-{desc}" if desc else ""))
    return {name: f"{base}_param-{bids_param(name)}_dwimap.nii.gz" for name in MAP_FILES}


def bids_fit_sidecar(map_path):
    """The toolbox's sidecar of the fit (as ``ivim_fitting.json``) beside a BEP016 map: the map's
    name without its ``param-`` entity, ``.json`` (BIDS inheritance applies it to every map of the
    fit); None when ``map_path`` is not a BEP016 map's name."""
    path, n = re.subn(r"_param-[A-Za-z0-9]+_dwimap\.(nii(\.gz)?|json)$", "_dwimap.json", str(map_path))
    return path if n else None


def bids_sidecar(name, doc):
    """The JSON sidecar of one BEP016 map from the toolbox's sidecar ``doc`` of the fit."""
    p = PARAMETERS[name]
    model_fields = {
        "Description": f"IVIM bi-exponential model, {doc['model']['equation']}. {doc['model']['conversion']}",
        "URL": MODEL_URL,
        "Parameters": {"FitMethod": "nlls", "Approach": doc["approach"], "Engine": doc.get("engine"),
                       "BoundsVersion": doc.get("bounds_version"), "Bounds": doc.get("bounds"),
                       "BoundsOverrides": doc.get("bounds_overrides"),
                       "DstarConvention": doc.get("dstar_convention"), "Seed": doc.get("seed")},
    }
    return {"Description": doc["model"]["descriptions"][name], "Units": p.unit, "SkullStripped": False,
            "Sources": [(doc.get("inputs") or {}).get("dwi", {}).get("path")],
            "Model": model_fields,
            "GeneratedBy": {k: doc.get(k) for k in ("tool", "version", "command", "date")},
            "Directions": doc.get("directions"),
            "Summary": (doc.get("summary") or {}).get(name)}


def dataset_description():
    """``dataset_description.json`` of the derivative dataset the toolbox writes."""
    return {"Name": "IVIM maps (ivim-toolbox)", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "ivim-toolbox", "Version": __version__, "CodeURL": CODE_URL}]}


def check_bids_outputs(root, paths, force):
    """Refuse, before any work, BEP016 maps (or sidecars) that exist, without ``force``; the
    derivative root itself may exist (other subjects' maps are left alone)."""
    paths = list(paths)
    fit_json = [bids_fit_sidecar(paths[0])] if paths else []
    check_outputs([q for path in paths for q in (path, path.replace(".nii.gz", ".json"))] + fit_json, force)
    check_outputs([os.path.join(root, "dataset_description.json")], True)


def write_bids_maps(root, paths, volumes, reference, doc):
    """Write the BEP016 maps of ``volumes`` with their JSON sidecars, the fit's sidecar ``doc``
    (:func:`bids_fit_sidecar`, its ``maps`` the files written), and ``dataset_description.json``
    at ``root`` if there is none yet, complete or not at all.  The maps of ``paths`` this fit does
    not write (a replaced run's) are removed.  Returns the fit's sidecar as written."""
    description = os.path.join(root, "dataset_description.json")
    written = {name: path for name, path in paths.items() if name in volumes}
    jsons = {name: path.replace(".nii.gz", ".json") for name, path in written.items()}
    fit_json = bids_fit_sidecar(paths["S0"])
    doc = {**doc, "maps": {name: os.path.basename(path) for name, path in written.items()}}
    outputs = [*written.values(), *jsons.values(), fit_json] + ([] if os.path.exists(description) else [description])
    with staged_outputs(outputs) as tmp:
        for name, path in written.items():
            write_map(tmp[path], volumes[name], reference)
            write_json(tmp[jsons[name]], bids_sidecar(name, doc))
        write_json(tmp[fit_json], doc)
        if description in tmp:
            write_json(tmp[description], dataset_description())
    for path in (q for name, p in paths.items() if name not in volumes for q in (p, p.replace(".nii.gz", ".json"))):
        if os.path.lexists(path):
            os.remove(path)
    return doc


# --------------------------------------------------------------------------- simulation results

def load_results(path):
    """Arrays of one result file (``allow_pickle=False``); InputError if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read as a simulation result (.npz): {exc}") from None
    if "kind" not in arrays or str(arrays["kind"]) not in SIMULATION_KINDS:
        raise InputError(f"{path}: not a simulation result of this toolbox (no valid 'kind' array)")
    for name in SIMULATION_CELL_ARRAYS:
        if name in arrays and arrays[name].dtype.kind not in "iuf":
            raise InputError(f"{path}: array {name!r} has data type {arrays[name].dtype}, not real numbers")
    arrays.setdefault("shard", np.array([1, 1]))
    return arrays


def save_results(npz_path, json_path, arrays, doc):
    """Write a result: its arrays as .npz (no object arrays) and its sidecar ``doc`` as JSON.

    The scripts write into the temporary paths of :func:`staged_outputs`.
    """
    for name, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(f"array {name!r} has dtype object")  # would need pickle to load
    np.savez(npz_path, **arrays)
    write_json(json_path, doc)
