"""The toolbox's result files: a fit folder (float32 maps on the DWI's grid and their sidecar,
written and read back) and a simulation's arrays (``.npz``, read without pickle) with their JSON."""
import json
import os

import nibabel as nib
import numpy as np

from ..constants import FIT_SIDECAR, MAP_FILES, SIMULATION_CELL_ARRAYS, SIMULATION_KINDS
from ..errors import InputError
from .inputs import load_on_grid
from .outputs import check_output_folder, staged_outputs
from .provenance import write_json


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
