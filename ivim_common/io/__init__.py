"""Files in and out, one module per concern:

- :mod:`~ivim_common.io.inputs`: reading and checking the b-values, the DWI and its mask;
- :mod:`~ivim_common.io.directions`: b-vectors and the ``--directions`` modes;
- :mod:`~ivim_common.io.outputs`: outputs checked before any work, staged and moved into place,
  ``--force``, one run per folder (nothing of IVIM there: every script uses it);
- :mod:`~ivim_common.io.provenance`: the sidecars' provenance (sha256 of the inputs, command,
  version, model) and the JSON writer;
- :mod:`~ivim_common.io.results`: a fit folder's maps and sidecar, a simulation's .npz and JSON;
- :mod:`~ivim_common.io.bids`: BIDS derivatives;
- :mod:`~ivim_common.io.bids_dataset`: reading a BIDS dataset (entities, inheritance, derivatives).

Every user mistake raises :class:`ivim_common.errors.IvimError` (or a subclass) with one line
that names the file and the problem.  The names are re-exported here, so ``from ivim_common
import io; io.load_fit_inputs(...)`` works; the package's own modules import from the
concerned module.
"""
from .provenance import sha256_file, input_record, provenance, model_record, write_json  # noqa: F401
from .inputs import (  # noqa: F401
    check_readable, read_bvals, check_data_type, check_memory, load_nifti, load_on_grid, FitInputs,
    load_fit_inputs)
from .outputs import check_output_folder, check_outputs, staged_outputs, LOCK_SUFFIX, output_folder_lock  # noqa: F401
from .directions import (  # noqa: F401
    SAME_DIRECTION_COS, UNIT_NORM_TOLERANCE, find_beside, b_shells, read_bvecs, direction_labels, direction_sets,
    volume_sets)
from .bids import (  # noqa: F401
    BIDS_PARAM, BIDS_VERSION, CODE_URL, MODEL_URL, bids_source, bids_param, bids_paths, bids_fit_sidecar,
    bids_sidecar, dataset_description,
    check_bids_outputs, write_bids_maps)
from .results import (  # noqa: F401
    write_map, median_iqr, read_sidecar, write_fit_folder, read_fit_folder, load_results, save_results)
