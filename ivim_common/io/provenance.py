"""Provenance of every output: the sidecar's record of the inputs (sha256), the command, the
version and the model, and the JSON writer every sidecar goes through."""
import datetime
import hashlib
import json
import math
import os
import shlex

import numpy as np

from .. import model
from ..constants import PARAMETERS, parameters
from ..version import __version__


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
