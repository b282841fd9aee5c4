"""A BIDS raw dataset as ivim_bids.py reads it: its DWIs, their b-values by inheritance, masks.

A small parser of our own rather than pybids: the app needs the DWIs of a few participants
(``sub-*/[ses-*/]dwi/*_dwi.nii[.gz]``), the nearest ``.bval``/``.bvec``/``.json`` up the tree
whose entities are a subset of the DWI's (the BIDS inheritance principle), and a file of a
derivatives dataset matching a DWI's entities; pybids indexes every file of the dataset (with
SQLAlchemy) before it answers, which costs seconds to minutes on a large study, in every array
task.

Inheritance.  A metadata file applies to a DWI when it lies in the DWI's folder or a folder
above it within the dataset (``dwi/``, ``ses-*/``, ``sub-*/``, the root), its suffix is
``dwi`` and its entities are a subset of the DWI's (``acq-ivim_dwi.bval`` at the root applies
to every ``..._acq-ivim_..._dwi.nii.gz``).  For ``.bval`` and ``.bvec`` the nearest applies
(deepest folder; in one folder, the one with most entities); the JSON files are merged from the
root down, the nearer overriding the keys of the farther.
"""
import dataclasses
import glob
import os
import re

import numpy as np

from ..constants import MODEL_PARAMETERS
from ..errors import InputError
from .bids import bids_source
from .inputs import load_on_grid
from .results import read_sidecar

# Entities of a DWI's name, in the order of the BIDS specification (appendix: entity table).
DWI_ENTITIES = ("sub", "ses", "acq", "rec", "dir", "run", "part", "chunk")
NAME = re.compile(r"^(?P<entities>(?:[a-zA-Z]+-[a-zA-Z0-9]+_)*)(?P<suffix>[a-zA-Z0-9]+)(?P<ext>\.[a-z.]+)$")


def parse_name(filename):
    """``(entities, suffix, extension)`` of a BIDS file name, or None when it is not one.

    Examples
    --------
    >>> parse_name("sub-01_ses-2_acq-ivim_run-1_dwi.nii.gz")
    ({'sub': '01', 'ses': '2', 'acq': 'ivim', 'run': '1'}, 'dwi', '.nii.gz')
    >>> parse_name("acq-ivim_dwi.bval")
    ({'acq': 'ivim'}, 'dwi', '.bval')
    """
    match = NAME.match(os.path.basename(filename))
    if match is None:
        return None
    entities = dict(part.split("-", 1) for part in match["entities"].split("_") if part)
    return entities, match["suffix"], match["ext"]


@dataclasses.dataclass
class Dwi:
    """One DWI of the dataset and the files that apply to it.

    Attributes
    ----------
    path : str
    entities : dict
        ``{"sub": "01", "ses": "2", "acq": "ivim", ...}``.
    bval, bvec : str or None
        The nearest applicable ``.bval``/``.bvec`` (inheritance), None where there is none.
    json_files : list of str
        The applicable ``.json`` files, farthest first.
    metadata : dict
        Their keys merged (the nearer wins).
    """
    path: str
    entities: dict
    bval: str = None
    bvec: str = None
    json_files: list = dataclasses.field(default_factory=list)
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self):
        """The entities as in the file name, e.g. ``sub-01_ses-2_acq-ivim`` (as its derivatives' names
        start: :func:`ivim_common.io.bids_source`)."""
        return bids_source(self.path)[1]

    @property
    def folders(self):
        """The folders of its derivatives: ``["sub-01", "ses-2", "dwi"]``."""
        return [f"sub-{self.entities['sub']}"] + ([f"ses-{self.entities['ses']}"] if "ses" in self.entities
                                                  else []) + ["dwi"]


class BidsDataset:
    """A BIDS raw dataset: the folder with ``dataset_description.json``.

    Raises
    ------
    InputError
        Not a folder, or no ``dataset_description.json`` in it (not a BIDS dataset).
    """

    def __init__(self, root):
        self.root = os.path.abspath(root)
        if not os.path.isdir(self.root):
            raise InputError(f"BIDS dataset {root}: no such folder")
        description = os.path.join(self.root, "dataset_description.json")
        if not os.path.isfile(description):
            raise InputError(f"BIDS dataset {root}: not a BIDS dataset (no dataset_description.json)")
        self.description = read_json(description)

    def participants(self):
        """Labels (without ``sub-``) of the participant folders, sorted."""
        return sorted(os.path.basename(p)[4:] for p in glob.glob(os.path.join(self.root, "sub-*"))
                      if os.path.isdir(p))

    def select(self, labels=None):
        """The participants ``labels`` (with or without ``sub-``; None: all), checked to exist."""
        known = self.participants()
        if not labels:
            return known
        chosen = list(dict.fromkeys(label.removeprefix("sub-") for label in labels))
        missing = [label for label in chosen if label not in known]
        if missing:
            raise InputError(f"BIDS dataset {self.root}: no participant {', '.join('sub-' + m for m in missing)} "
                             f"(it has {len(known)}: {', '.join(known[:5])}{', ...' if len(known) > 5 else ''})")
        return chosen

    def dwis(self, participant, sessions=None):
        """The DWIs of one participant (label without ``sub-``), of ``sessions`` only if given
        (labels with or without ``ses-``), sorted by name, with their metadata files."""
        sessions = None if not sessions else {s.removeprefix("ses-") for s in sessions}
        out = []
        for pattern in ("dwi", os.path.join("ses-*", "dwi")):
            for path in glob.glob(os.path.join(self.root, f"sub-{participant}", pattern, "*_dwi.nii*")):
                parsed = parse_name(path)
                if parsed is None or parsed[2] not in (".nii", ".nii.gz"):
                    continue
                entities = parsed[0]
                if sessions is not None and entities.get("ses") not in sessions:
                    continue
                out.append(self.describe(path, entities))
        return sorted(out, key=lambda d: d.path)

    def describe(self, path, entities):
        """A :class:`Dwi` with the metadata files that apply to it by inheritance."""
        jsons = applicable(self.root, path, entities, ".json")
        metadata = {}
        for json_path in reversed(jsons):
            metadata.update(read_json(json_path))
        bval, bvec = (next(iter(applicable(self.root, path, entities, ext)), None) for ext in (".bval", ".bvec"))
        return Dwi(path, entities, bval, bvec, list(reversed(jsons)), metadata)


def applicable(root, path, entities, ext, suffix="dwi"):
    """The files of extension ``ext`` and ``suffix`` that apply to ``path`` by inheritance,
    nearest first (deepest folder first; within a folder, most entities first)."""
    found = []
    folder = os.path.dirname(os.path.abspath(path))
    root = os.path.abspath(root)
    depth = 0
    while True:
        for candidate in glob.glob(os.path.join(folder, f"*{ext}")):
            parsed = parse_name(candidate)
            if (parsed and parsed[1] == suffix and parsed[2] == ext
                    and all(entities.get(k) == v for k, v in parsed[0].items())):
                found.append((depth, -len(parsed[0]), candidate))
        if folder == root or os.path.dirname(folder) == folder:
            break
        folder, depth = os.path.dirname(folder), depth + 1
    return [c for *_, c in sorted(found)]


def find_derivative(deriv_root, dwi, suffix, role):
    """The ``<entities>*_<suffix>.nii.gz`` of a DWI in a derivatives dataset (``mask``,
    ``dseg``), in the DWI's folders there: the one with all the DWI's entities, ``desc-brain``
    preferred, then the shortest name.

    Raises
    ------
    InputError
        None found.
    """
    folder = os.path.join(deriv_root, *dwi.folders)
    candidates = []
    for path in glob.glob(os.path.join(folder, f"sub-*_{suffix}.nii*")):
        parsed = parse_name(path)
        if parsed and parsed[1] == suffix and all(parsed[0].get(k) == v for k, v in dwi.entities.items()):
            candidates.append((parsed[0].get("desc") != "brain", len(os.path.basename(path)), path))
    if not candidates:
        raise InputError(f"{role} for {os.path.basename(dwi.path)}: no {dwi.name}*_{suffix}.nii.gz in {folder}")
    return min(candidates)[2]


def read_dseg_labels(dseg_path, deriv_root):
    """``{index: name}`` of a ``_dseg.nii.gz`` from its ``_dseg.tsv`` (columns ``index`` and
    ``name``): the one beside it of the same name, else the nearest up the tree by inheritance;
    without one, each label is named by its index."""
    entities = parse_name(dseg_path)[0]
    beside = re.sub(r"\.nii(\.gz)?$", ".tsv", dseg_path)
    tables = [beside] if os.path.isfile(beside) else applicable(deriv_root, dseg_path, entities, ".tsv", "dseg")
    if not tables:
        return {}
    rows = read_tsv(tables[0])
    try:
        return {int(row["index"]): row["name"] for row in rows}
    except (KeyError, ValueError):
        raise InputError(f"label table {tables[0]}: needs columns 'index' (integers) and 'name'") from None


def read_tsv(path):
    """Rows of a TSV file as dicts (header on the first line)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = [line.rstrip("\r\n").split("\t") for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read it as a TSV table ({exc})") from None
    if not lines:
        return []
    return [dict(zip(lines[0], row)) for row in lines[1:]]


def read_json(path):
    """A JSON file's object (:func:`ivim_common.io.read_sidecar`); InputError if it is not one."""
    doc = read_sidecar(path)
    if not isinstance(doc, dict):
        raise InputError(f"{path}: not a JSON object")
    return doc


def check_output_dir(bids_root, output_dir):
    """Refuse an OUTPUT_DIR inside BIDS_DIR other than under ``BIDS_DIR/derivatives/``, and
    BIDS_DIR itself or a folder holding it."""
    bids_root, out = os.path.realpath(bids_root), os.path.realpath(output_dir)
    derivatives = os.path.join(bids_root, "derivatives")
    if os.path.commonpath([out, bids_root]) == out:
        raise InputError(f"output folder {output_dir}: is the BIDS dataset or holds it; write into "
                         f"{derivatives}{os.sep}<name> or outside the dataset")
    inside = os.path.commonpath([out, bids_root]) == bids_root
    if inside and (out == derivatives or os.path.commonpath([out, derivatives]) != derivatives):
        raise InputError(f"output folder {output_dir}: inside the BIDS dataset but not under its derivatives/ "
                         f"folder; write into {derivatives}{os.sep}<name>")


def fit_map_path(doc, name):
    """The path of map ``name`` of a fit, from its sidecar ``doc`` (with ``_path``, where it was read)."""
    return os.path.join(os.path.dirname(doc["_path"]), doc["maps"][name])


def read_fit(doc):
    """The maps of a fit in BEP016 names, from its sidecar ``doc`` (with ``_path``).

    Returns
    -------
    maps : dict of str -> ndarray (x, y, z)
        Every map the sidecar lists (float64), checked to be on the S0 map's grid.
    inside : ndarray of bool (x, y, z)
        The fitted mask: where a model parameter's map is not 0 (they are 0 outside it).
    reference : nibabel image
        The S0 map (grid, affine, voxel size).
    """
    reference = load_on_grid(fit_map_path(doc, "S0"), "S0 map", 3)[0]
    maps = {name: load_on_grid(fit_map_path(doc, name), f"{name} map", 3, reference)[1] for name in doc["maps"]}
    return maps, np.any([maps[n] != 0 for n in MODEL_PARAMETERS], axis=0), reference
