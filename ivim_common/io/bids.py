"""BIDS derivatives (the BEP016 draft): the names of the maps from the DWI's, their JSON
sidecars and the dataset's ``dataset_description.json``."""
import os
import re

from ..constants import MAP_FILES, PARAMETERS
from ..version import __version__
from .outputs import check_outputs, staged_outputs
from .provenance import write_json
from .results import write_map


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
