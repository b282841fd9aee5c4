"""The flags the scripts share are declared once (ivim_common.cli): every script that has one
accepts the same long form, with the same help, and the original toolbox's spellings still work."""
import importlib
import re

import pytest

FITTING, VIEW, PLOT, DESIGN = "ivim_fitting", "ivim_view_fits", "ivim_simu_plot", "ivim_simu_optimize_bvals"
BIDS, GUI = "ivim_bids", "ivim_toolbox"
COMPUTE = ("ivim_simu_compute_error_nonoise", "ivim_simu_compute_error_noise", "ivim_simu_compute_required_snr")
MODEL_SCRIPTS = (FITTING, BIDS, *COMPUTE)

# long form: the scripts that take it
SHARED = {
    "--approach": (*MODEL_SCRIPTS, DESIGN),
    "--bounds-version": (*MODEL_SCRIPTS, DESIGN),
    "--b-threshold": MODEL_SCRIPTS,
    "--dstar-convention": MODEL_SCRIPTS,
    "--engine": (*MODEL_SCRIPTS, DESIGN),
    "--seed": (*MODEL_SCRIPTS, DESIGN),
    "--jobs": (*MODEL_SCRIPTS, DESIGN),
    "--ofolder": (FITTING, *COMPUTE, DESIGN),
    "--force": (FITTING, *COMPUTE, DESIGN, PLOT, VIEW),          # ivim_bids.py's also redoes complete DWIs
    "--version": (*MODEL_SCRIPTS, DESIGN, PLOT, VIEW, GUI),
    **{flag: (FITTING, BIDS) for flag in ("--directions", "--b-tolerance", "--bounds", "--chunk-size",
                                          "--model-choice", "--bootstrap", "--prior")},
}


def actions(script):
    """{option string: argparse action} of a script's parser."""
    parser = importlib.import_module(script).get_parser()
    return {option: action for action in parser._actions for option in action.option_strings}


def help_of(action):
    """The help text without its default, which may differ from script to script."""
    return re.sub(r" \(default: (%\(default\)s|[^)]*)\)", "", action.help)


@pytest.mark.parametrize("flag", sorted(SHARED))
def test_a_shared_flag_has_one_long_form_and_one_help(flag):
    found = {script: actions(script).get(flag) for script in SHARED[flag]}
    assert [script for script, action in found.items() if action is None] == []
    assert len({help_of(action) for action in found.values()}) == 1, {s: a.help for s, a in found.items()}
    assert len({action.dest for action in found.values()}) == 1


@pytest.mark.parametrize("script, original, long_form", [
    (FITTING, "-mo", "--approach"), (FITTING, "--model", "--approach"), (FITTING, "-o", "--ofolder"),
    (BIDS, "-mo", "--approach"), (BIDS, "--model", "--approach"),
    *[(script, "-model", "--approach") for script in (*COMPUTE, DESIGN)],
    *[(script, "-ofolder", "--ofolder") for script in (*COMPUTE, DESIGN)],
])
def test_the_original_spellings_are_the_same_flag(script, original, long_form):
    flags = actions(script)
    assert flags[original] is flags[long_form]


def test_the_long_forms_parse_as_the_original_spellings(tmp_path):
    fitting = importlib.import_module(FITTING).get_parser()
    base = ["-i", "dwi.nii.gz"]
    original = fitting.parse_args(base + ["-mo", "two-step", "-o", "out", "-j", "3", "--seed", "5"])
    long_forms = fitting.parse_args(base + ["--approach", "two-step", "--ofolder", "out", "--jobs", "3", "--seed", "5"])
    assert vars(original) == vars(long_forms) and original.model == "two-step" and original.ofolder == "out"
    noise = importlib.import_module(COMPUTE[1]).get_parser()
    original = noise.parse_args(["-model", "segmented", "-ofolder", "sim", "-snr", "50"])
    long_forms = noise.parse_args(["--approach", "segmented", "--ofolder", "sim", "-snr", "50"])
    same = ("model", "ofolder")
    assert [getattr(long_forms, k) for k in same] == [getattr(original, k) for k in same] == ["segmented", "sim"]
