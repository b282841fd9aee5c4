"""The graphical interface of ivim_toolbox.py: two frames, Fit and Required SNR, in tkinter/ttk.

Each frame is a form over one script's command line (ivim_fitting.py,
ivim_simu_compute_required_snr.py): it builds the argv, checks it with that script's own parser
and usage checks, and runs that script's ``main()`` in a child process, so its outputs are the
script's bit for bit and "Copy command" gives the line to put in a batch script.  The child's
progress lines (:class:`ivim_common.progress.Progress`, one per update with
``IVIM_PROGRESS_INTERVAL_S=0``) move the progress bar; Stop sends SIGINT to the child's process
group, as Ctrl-C does in a terminal (nothing half-written).  The GUI never fits a volume: the
Fit frame's preview fits one voxel in-process through :class:`ivim_common.IvimModel`.

The public contract, for tests and automation: :class:`ToolboxApp` (a ``tk.Tk``) with frames
``.fit`` and ``.snr``, each with ``set_from_argv(argv)``, ``command_line()``, ``run()``,
``wait(timeout)`` and ``stop()``.

The frames drive the top-level scripts: they import those modules by name (:data:`SCRIPTS`)
for their parsers, usage checks and file names; this is the one module of the package that
does, as the GUI stands above the scripts it runs.
"""
import argparse
import glob
import importlib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import tkinter as tk
from tkinter import filedialog, messagebox, ttk

import numpy as np

from . import constants, engines, simu_cli
from .errors import IvimError, OutputExistsError

SCRIPTS = {"fit": "ivim_fitting", "snr": "ivim_simu_compute_required_snr", "viewer": "ivim_view_fits"}
PROGRESS_LINE = re.compile(r": (\d+)/(\d+) \w+ \(\d+ %\) after")
POLL_MS = 50
ERROR_COLOR = "#b00020"


class ParserError(Exception):
    """A usage error of a script's parser, caught where the script would exit 2 (its message,
    without the program name); not :class:`ivim_common.errors.UsageError`, which a run raises."""


def script(key):
    """The top-level script module of :data:`SCRIPTS` (see the module's docstring)."""
    return importlib.import_module(SCRIPTS[key])


def checking_parser(module):
    """The script's parser, raising ParserError where the script would print a usage error and
    exit 2 (``exit_on_error`` off: a bad value raises argparse.ArgumentError with its argument)."""
    parser = module.get_parser()
    parser.exit_on_error = False

    def error(message):
        raise ParserError(message)

    parser.error = error
    return parser


def field_error(parser, option, text):
    """The message argparse gives for ``option text`` (the script's type and choices), or ''."""
    try:
        parser.parse_known_args([option, text])
    except argparse.ArgumentError as err:
        if option in (err.argument_name or "").split("/"):
            return err.message
    except ParserError:
        pass                      # the required arguments missing from this one-option line
    return ""


class Field:
    """One option of the command line: its tk variable, default (not written when unchanged),
    widget and the message label beside it."""

    def __init__(self, option, default="", flag=False, aliases=()):
        self.option, self.default, self.flag = option, default, flag
        self.aliases = (option, *aliases)
        self.var = tk.BooleanVar(value=False) if flag else tk.StringVar(value=default)
        self.message = None
        self.widget = None

    def argv(self):
        if self.flag:
            return [self.option] if self.var.get() else []
        text = self.var.get().strip()
        return [self.option, text] if text and text != self.default else []

    def set(self, value):
        self.var.set(value if not self.flag else bool(value))


class ScriptFrame(ttk.Frame):
    """What both frames share: the fields of a script's options, Copy/Load command, Run with a
    progress bar and Stop, checks shown at their fields."""

    KEY = None                              # of SCRIPTS

    def __init__(self, master):
        super().__init__(master, padding=8)
        self.module = script(self.KEY)
        self.parser = checking_parser(self.module)
        self.fields = {}
        self.proc = None
        self.returncode = None
        self.lines = queue.Queue()
        self.last_line = ""
        self.ask = messagebox.askyesno       # replaced by tests and automation
        self.timings = {}
        self.form = ttk.Frame(self)
        self.form.grid(row=0, column=0, sticky="nsew")
        self.row = 0

    # ---- building the form

    def add_field(self, label, option, kind="entry", values=(), browse=None, aliases=(), width=34):
        """A labelled field; kind 'entry', 'choice' (values) or 'flag'; browse 'open'/'folder'."""
        field = Field(option, self.parser_default((option, *aliases)), kind == "flag", aliases)
        ttk.Label(self.form, text=label).grid(row=self.row, column=0, sticky="w", pady=1)
        if kind == "choice":
            widget = ttk.Combobox(self.form, textvariable=field.var, values=list(values), state="readonly",
                                  width=width - 2)
        elif kind == "flag":
            widget = ttk.Checkbutton(self.form, variable=field.var)
        else:
            widget = ttk.Entry(self.form, textvariable=field.var, width=width)
        widget.grid(row=self.row, column=1, sticky="w" if kind == "flag" else "ew", pady=1)
        if browse:
            ttk.Button(self.form, text="…", width=2, command=lambda: self.browse(field, browse)).grid(
                row=self.row, column=2, sticky="w")
        field.message = ttk.Label(self.form, foreground=ERROR_COLOR, wraplength=330)
        field.message.grid(row=self.row, column=3, sticky="w", padx=4)
        field.widget = widget
        if kind == "entry":
            field.var.trace_add("write", lambda *_: self.check_field(field))
        self.fields[option] = field
        self.row += 1
        return field

    def parser_default(self, options):
        """The script's default of an option as text ('' for None and flags), under the dest
        that one of its spellings names (-mo, --model and --approach: 'model')."""
        defaults = (self.parser.get_default(option.lstrip("-").replace("-", "_")) for option in options)
        value = next((v for v in defaults if v is not None), None)
        return "" if value is None or isinstance(value, bool) else str(value)

    def browse(self, field, how):
        path = (filedialog.askdirectory(parent=self) if how == "folder"
                else filedialog.askopenfilename(parent=self))
        if path:
            field.var.set(os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path)

    def add_buttons(self, *buttons):
        """The row of buttons, the progress bar and the status line under the form."""
        bar = ttk.Frame(self)
        bar.grid(row=1, column=0, sticky="ew", pady=(8, 2))
        self.buttons = {}
        for text, command in buttons:
            self.buttons[text] = ttk.Button(bar, text=text, command=command)
            self.buttons[text].pack(side="left", padx=2)
        self.buttons["Stop"].state(["disabled"])
        self.progress = ttk.Progressbar(self, mode="determinate", maximum=100.0)
        self.progress.grid(row=2, column=0, sticky="ew", pady=2)
        self.status = ttk.Label(self, text="", wraplength=560)
        self.status.grid(row=3, column=0, sticky="w")
        self.command_text = tk.Text(self, height=3, wrap="word", relief="flat", background="#f4f4f4",
                                    font=("TkFixedFont", 9))
        self.command_text.grid(row=4, column=0, sticky="ew", pady=2)
        self.columnconfigure(0, weight=1)

    def side_panel(self, title):
        """The panel right of the form, for figures; the form's column keeps its height."""
        side = ttk.LabelFrame(self, text=title, padding=4)
        side.grid(row=0, column=1, rowspan=6, sticky="nsew", padx=(8, 0))
        self.columnconfigure(1, weight=1)
        self.rowconfigure(5, weight=1)
        return side

    def say(self, text, error=False):
        """One line in the status line (red for an error)."""
        self.status.configure(text=text, foreground=ERROR_COLOR if error else "")

    # ---- the command line

    def argv(self):
        """The script's arguments the frame holds (options at their defaults left out)."""
        out = []
        for option, field in self.fields.items():
            out += shlex.split(field.var.get()) if option == "other" else field.argv()
        return out

    def command_line(self):
        """The exact line the frame runs: ``<script>.py arguments...``."""
        return shlex.join([self.prog(), *self.argv()])

    def prog(self):
        return getattr(self.module, "PROG", self.module.__name__ + ".py")

    def copy_command(self):
        line = self.command_line()
        self.clipboard_clear()
        self.clipboard_append(line)
        self.show_command(line)
        self.say("command copied to the clipboard")

    def show_command(self, line):
        self.command_text.delete("1.0", "end")
        self.command_text.insert("1.0", line)

    def load_command(self):
        """Fill the fields from a line pasted into the command box (the script's name optional)."""
        try:
            argv = shlex.split(self.command_text.get("1.0", "end"))
        except ValueError as err:            # an unclosed quote: the fields stay as they are
            self.say(f"cannot split the command as a shell would: {err}", error=True)
            return
        self.set_from_argv(argv)

    def set_from_argv(self, argv):
        """Fill the fields from the script's arguments; options without a field go to 'other'."""
        argv = list(argv)
        if argv and os.path.basename(argv[0]) in (self.prog(), self.module.__name__):
            argv = argv[1:]
        for field in self.fields.values():
            self.set_field(field, False if field.flag else field.default)
        by_alias = {alias: f for f in self.fields.values() for alias in f.aliases}
        other, i = [], 0
        while i < len(argv):
            option, eq, value = argv[i].partition("=")
            field = by_alias.get(option)
            if field is not None and field.flag:
                field.set(True)
            elif field is not None:
                if not eq:
                    i += 1
                    value = argv[i] if i < len(argv) else ""
                self.set_field(field, value)
            else:
                other.append(argv[i])
            i += 1
        self.fields["other"].var.set(shlex.join(other))
        self.after_load()
        self.show_command(self.command_line())
        self.say("")

    def set_field(self, field, value):
        field.set(value)

    def after_load(self):
        """Hook: enable and disable fields after a change of the choices."""

    # ---- checks

    def check_field(self, field):
        """Show the script's message for this field's value beside it ('' when it is fine)."""
        text = field.var.get().strip()
        message = field_error(self.parser, field.option, text) if text and field.option.startswith("-") else ""
        field.message.configure(text=message)
        return message

    def checked_args(self):
        """The parsed arguments, or None after showing the problem at its field or in the status line."""
        for field in self.fields.values():
            field.message.configure(text="")
        try:
            return self.parse(self.parser, self.argv())
        except (ParserError, argparse.ArgumentError) as err:
            message = str(err)
            match = re.match(r"argument ([^:]+): (.*)", message)
            fields = [f for f in self.fields.values() if match and set(f.aliases) & set(match.group(1).split("/"))]
            if fields:
                fields[0].message.configure(text=match.group(2))
            self.say(f"{self.prog()}: error: {message}", error=True)
            return None

    def parse(self, parser, argv):
        raise NotImplementedError

    def check_outputs(self, args):
        """Hook: IvimError for outputs that may not be written (OutputExistsError: ask)."""

    # ---- running the script

    def run(self):
        """Check the fields and start the script in a child process; False if refused."""
        if self.running():
            return False
        args = self.checked_args()
        if args is None:
            return False
        try:
            self.check_inputs(args)
        except OutputExistsError as err:
            if "--force" not in self.fields or not self.ask("Replace?", f"{err}\n\nRun with --force?"):
                self.say(f"{self.prog()}: error: {err}", error=True)
                return False
            self.fields["--force"].set(True)
        except IvimError as err:
            self.say(f"{self.prog()}: error: {err}", error=True)
            return False
        return self.start(self.argv())

    def check_inputs(self, args):
        self.check_outputs(args)

    def start(self, argv):
        self.show_command(shlex.join([self.prog(), *argv]))
        self.returncode = None
        self.timings = {"start": time.monotonic()}
        env = {**os.environ, "IVIM_PROGRESS_INTERVAL_S": "0", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, self.module.__file__, *argv], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)
        self.readers = [threading.Thread(target=self.read, args=(stream,), daemon=True)
                        for stream in (self.proc.stdout, self.proc.stderr)]
        for reader in self.readers:
            reader.start()
        self.progress.configure(mode="indeterminate")
        self.progress.start(20)
        self.buttons["Stop"].state(["!disabled"])
        self.say("running…")
        self.after(POLL_MS, self.poll)
        return True

    def read(self, stream):
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def poll(self):
        while not self.lines.empty():
            self.take_line(self.lines.get())
        if self.proc is None:
            return
        if self.proc.poll() is None or any(r.is_alive() for r in self.readers):
            self.after(POLL_MS, self.poll)
            return
        while not self.lines.empty():
            self.take_line(self.lines.get())
        self.finish(self.proc.returncode)

    def take_line(self, line):
        match = PROGRESS_LINE.search(line)
        if match:
            done, total = int(match.group(1)), int(match.group(2))
            if self.progress.cget("mode") != "determinate":
                self.progress.stop()
                self.progress.configure(mode="determinate")
                self.timings.setdefault("first_progress_s", time.monotonic() - self.timings["start"])
            self.progress.configure(value=100.0 * done / max(total, 1))
        if line.strip():
            self.last_line = line.strip()
            self.say(self.last_line)

    def finish(self, returncode):
        self.proc, self.returncode = None, returncode
        self.timings["run_s"] = time.monotonic() - self.timings["start"]
        self.progress.stop()
        self.progress.configure(mode="determinate", value=100.0 if returncode == 0 else 0.0)
        self.buttons["Stop"].state(["disabled"])
        if returncode == 0:
            self.say(f"done in {self.timings['run_s']:.1f} s: {self.last_line}")
            self.done()
        else:
            self.say(f"exit {returncode}: {self.last_line}", error=True)

    def done(self):
        """Hook: what to show after a successful run."""

    def running(self):
        return self.proc is not None

    def stop(self):
        """Stop the run as Ctrl-C does: SIGINT to the script and its workers."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.say("stopping…")

    def wait(self, timeout):
        """Serve the window's events until the run ends; True if it ended and succeeded."""
        deadline = time.monotonic() + timeout
        while self.proc is not None and time.monotonic() < deadline:
            self.update()
            time.sleep(0.01)
        return self.proc is None and self.returncode == 0


class FitFrame(ScriptFrame):
    """ivim_fitting.py: inputs, fit options, bounds, outputs, a one-voxel preview, Run."""

    KEY = "fit"

    def __init__(self, master):
        super().__init__(master)
        from . import model

        self.model = model
        self.inputs_cache = (None, None)
        dwi = self.add_field("DWI (4-D NIfTI)", "-i", browse="open", aliases=("--input",))
        dwi.var.trace_add("write", lambda *_: self.dwi_changed())
        self.add_field("b-values", "-b", browse="open", aliases=("--bval",))
        self.add_field("b-vectors", "--bvec", browse="open")
        self.add_field("mask", "-ma", browse="open", aliases=("--mask",))
        self.add_field("approach", "-mo", "choice", constants.APPROACHES, aliases=("--model", "--approach"))
        self.add_field("bounds preset", "--bounds-version", "choice", constants.BOUNDS_VERSIONS)
        self.fields["--bounds-version"].default = "2020"
        self.fields["--bounds-version"].set("2020")
        self.add_field("engine", "--engine", "choice", tuple(engines.ENGINES))
        for options in engines.OPTIONS.values():
            for option, (choices, default, _) in options.items():
                field = self.add_field(option.replace("_", " "), f"--{option.replace('_', '-')}", "choice", choices)
                field.default = default
                field.set(default)
        self.add_field("D* convention", "--dstar-convention", "choice", constants.DSTAR_CONVENTIONS)
        self.add_field("directions", "--directions", "choice", constants.DIRECTION_MODES)
        self.add_bounds()
        self.add_field("output folder", "-o", browse="folder", aliases=("--ofolder",))
        self.add_field("BIDS output", "--bids", "flag")
        self.add_field("jobs", "-j", aliases=("--jobs",), width=8)
        self.add_field("model choice", "--model-choice", "choice", constants.MODEL_CHOICE_CRITERIA)
        self.add_field("bootstrap refits", "--bootstrap", width=8)
        self.add_field("replace outputs", "--force", "flag")
        self.add_field("other options", "other")
        for option in ("-mo", "--engine", "--dstar-convention", "--bounds-version"):
            self.fields[option].var.trace_add("write", lambda *_: self.after_load())
        self.add_buttons(("Run", self.run), ("Stop", self.stop), ("Open viewer", self.open_viewer),
                         ("Copy command", self.copy_command), ("Load command", self.load_command))
        self.buttons["Open viewer"].state(["disabled"])
        self.add_preview()
        self.after_load()

    def add_bounds(self):
        """The preset's bounds in words, and per parameter lower:upper[:start] becoming --bounds."""
        box = ttk.LabelFrame(self.form, text="bounds (empty: the preset's; lower:upper[:start])", padding=4)
        box.grid(row=self.row, column=0, columnspan=4, sticky="ew", pady=4)
        self.row += 1
        self.bound_vars, self.bound_texts = {}, {}
        for i, name in enumerate(("S0", "D", "f", "Dstar")):
            ttk.Label(box, text=name, width=6).grid(row=i, column=0, sticky="w")
            var = tk.StringVar()
            ttk.Entry(box, textvariable=var, width=18).grid(row=i, column=1, sticky="w")
            self.bound_texts[name] = ttk.Label(box, text="", foreground="#555555", wraplength=420)
            self.bound_texts[name].grid(row=i, column=2, sticky="w", padx=4)
            self.bound_vars[name] = var
        field = Field("--bounds")
        field.widget = box
        field.message = ttk.Label(box, foreground=ERROR_COLOR, wraplength=560)
        field.message.grid(row=4, column=0, columnspan=3, sticky="w")
        field.var.trace_add("write", lambda *_: self.check_field(field))
        for var in self.bound_vars.values():
            var.trace_add("write", lambda *_: field.var.set(self.bounds_spec()))
        self.fields["--bounds"] = field

    def bounds_spec(self):
        return ",".join(f"{name}={var.get().strip()}" for name, var in self.bound_vars.items() if var.get().strip())

    def set_field(self, field, value):
        if field.option != "--bounds":
            return field.set(value)
        for var in self.bound_vars.values():
            var.set("")
        for item in value.split(","):
            name, _, values = item.partition("=")
            name = "f" if name.strip() == "Fivim" else name.strip()
            if name in self.bound_vars:
                self.bound_vars[name].set(values)
            else:
                field.set(value)        # not one of ours: the script's message shows at the field
                return

    def after_load(self):
        one_step = self.fields["-mo"].var.get() == "one-step"
        self.fields["--bounds-version"].widget.state(["!disabled" if one_step else "disabled"])
        if not one_step:
            self.fields["--bounds-version"].set("2020")
        for engine, options in engines.OPTIONS.items():
            for option in options:
                field = self.fields[f"--{option.replace('_', '-')}"]
                field.widget.state(["!disabled" if self.fields["--engine"].var.get() == engine else "disabled"])
                if self.fields["--engine"].var.get() != engine:
                    field.set(field.default)
        try:
            words = self.model.bounds_description(self.fields["-mo"].var.get(),
                                                  self.fields["--bounds-version"].var.get(),
                                                  dstar_convention=self.fields["--dstar-convention"].var.get())
        except ValueError:               # an approach not chosen yet
            words = {}
        for name, key in (("S0", "S0"), ("D", "D"), ("f", "Fivim"), ("Dstar", "Dstar")):
            self.bound_texts[name].configure(text="preset: " + words[key] if key in words else "")

    def dwi_changed(self):
        """Fill in the b-values found beside a new DWI, as the script would, and show the image."""
        from . import io

        path = self.fields["-i"].var.get().strip()
        found = io.find_beside(path, "bval") if path else None
        if found and not self.fields["-b"].var.get().strip():
            self.fields["-b"].var.set(found)
        self.inputs_cache = (None, None)
        if os.path.isfile(path):
            self.after_idle(self.show_new_image)

    def show_new_image(self):
        """The lowest-b image of new inputs, at the middle voxel of the region to fit."""
        args, inputs = self.preview_inputs()
        if inputs is None or self.slice_shown and self.slice_shown[0] == id(inputs):
            return
        region = np.argwhere(inputs.selected)
        middle = region[np.argmin(((region - region.mean(axis=0)) ** 2).sum(axis=1))]
        for var, value in zip(self.voxel_vars, middle):
            var.set(str(value))
        self.show_slice(inputs)

    def parse(self, parser, argv):
        return self.module.parse_args(parser, argv)

    def check_inputs(self, args):
        self.inputs(args)
        self.check_outputs(args)

    def check_outputs(self, args):
        self.module.check_outputs(args, self.module.output_sets(args))

    def inputs(self, args):
        """The DWI, b-values and mask as the script loads them (cached while they are unchanged)."""
        from . import io

        key = tuple((p, os.path.getmtime(p) if p and os.path.exists(p) else None)
                    for p in (args.input, args.bval, args.mask)) + (args.model,)
        if self.inputs_cache[0] != key:
            self.inputs_cache = (key, io.load_fit_inputs(args.input, args.bval, args.mask, args.model))
        return self.inputs_cache[1]

    def done(self):
        self.buttons["Open viewer"].state(["!disabled"])

    def open_viewer(self):
        """ivim_view_fits.py on the f map of the last run, in a child process."""
        args = self.checked_args()
        if args is None:
            return
        folder, paths = next(iter(self.module.output_sets(args, ["dir1"] if args.directions == "each" else None)
                                  .values()))
        fmap = paths.get("Fivim") or os.path.join(folder, constants.MAP_FILES["Fivim"])
        viewer = script("viewer")
        self.viewer = subprocess.Popen([sys.executable, viewer.__file__, "-i", fmap], stdin=subprocess.DEVNULL,
                                       env={**os.environ, "MPLBACKEND": "TkAgg"})     # tk works: we are in it

    # ---- preview of one voxel

    def add_preview(self):
        from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg
        from matplotlib.figure import Figure

        side = self.side_panel("preview: one voxel with these settings (click the image)")
        row = ttk.Frame(side)
        row.pack(fill="x")
        self.voxel_vars = []
        for axis in "xyz":
            ttk.Label(row, text=axis).pack(side="left")
            var = tk.StringVar(value="0")
            ttk.Spinbox(row, from_=0, to=9999, textvariable=var, width=5,
                        command=self.show_slice if axis == "z" else None).pack(side="left", padx=(0, 6))
            self.voxel_vars.append(var)
        self.buttons["Fit voxel"] = ttk.Button(row, text="Fit voxel", command=self.preview)
        self.buttons["Fit voxel"].pack(side="left")
        self.preview_status = ttk.Label(side, text="", wraplength=480)
        self.preview_status.pack(fill="x")
        self.figure = Figure(figsize=(5.2, 6.4), dpi=90, layout="constrained")
        self.slice_ax, self.curve_ax = self.figure.subplots(2, 1, height_ratios=(1, 1))
        for ax, text in ((self.slice_ax, "the lowest-b image, once the DWI and b-values are read"),
                         (self.curve_ax, "the signal and fit of the voxel clicked")):
            ax.set_axis_off()
            ax.text(0.5, 0.5, text, ha="center", va="center", color="gray", transform=ax.transAxes)
        self.canvas = FigureCanvasTkAgg(self.figure, master=side)
        self.canvas.get_tk_widget().pack(fill="both", expand=True)
        self.canvas.mpl_connect("button_press_event", self.on_click)
        self.preview_queue = queue.Queue()
        self.slice_shown = None

    def voxel(self):
        return tuple(int(v.get()) for v in self.voxel_vars)

    def preview_inputs(self):
        args = self.checked_args()
        if args is None:
            return None, None
        try:
            return args, self.inputs(args)
        except IvimError as err:
            self.say(f"{self.prog()}: error: {err}", error=True)
            return None, None

    def show_slice(self, inputs=None, draw=True):
        """The lowest-b image at slice z, the voxel marked (only the mark moves within a slice)."""
        if inputs is None:
            inputs = self.preview_inputs()[1]
        if inputs is None:
            return
        x, y, z = self.voxel()
        z = min(max(z, 0), inputs.data.shape[2] - 1)
        if self.slice_shown != (id(inputs), z):
            lowest = inputs.data[..., inputs.bvals == inputs.bvals.min()].mean(axis=3)[:, :, z]
            ax = self.slice_ax
            ax.clear()
            ax.set_axis_on()
            ax.imshow(lowest.T, origin="lower", cmap="gray", interpolation="nearest")
            ax.contour(inputs.selected[:, :, z].T, levels=[0.5], colors="tab:orange", linewidths=0.8)
            self.marker = ax.plot([x], [y], "+", color="red", markersize=12, markeredgewidth=2)[0]
            ax.set_title(f"b = {inputs.bvals.min():g} s/mm², slice z = {z} (orange: fitted region)", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            region = np.argwhere(inputs.selected.any(axis=2))
            (x0, y0), (x1, y1) = region.min(axis=0), region.max(axis=0)
            margin = max(x1 - x0, y1 - y0, 8)             # the fitted region and as much around it
            ax.set_xlim(x0 - margin, x1 + margin)
            ax.set_ylim(y0 - margin, y1 + margin)
            self.slice_shown = (id(inputs), z)
        self.marker.set_data([x], [y])
        if draw:
            self.canvas.draw()

    def on_click(self, event):
        if event.inaxes is not self.slice_ax or event.xdata is None:
            return
        self.voxel_vars[0].set(str(int(round(event.xdata))))
        self.voxel_vars[1].set(str(int(round(event.ydata))))
        self.preview(clicked=time.monotonic())

    def preview(self, clicked=None):
        """Fit the voxel in a thread (the first fit may compile the engine) and draw it."""
        clicked = clicked or time.monotonic()
        args, inputs = self.preview_inputs()
        if inputs is None:
            return
        ijk = self.voxel()
        if any(not 0 <= v < n for v, n in zip(ijk, inputs.data.shape[:3])):
            self.preview_status.configure(text=f"voxel {ijk} outside the image {inputs.data.shape[:3]}",
                                          foreground=ERROR_COLOR)
            return
        self.show_slice(inputs, draw=False)            # drawn with the curve
        self.buttons["Fit voxel"].state(["disabled"])
        self.preview_status.configure(text=f"fitting voxel {ijk}…", foreground="")
        self.after(1000, self.notice_compiling)
        signal_ = inputs.data[ijk]
        threading.Thread(target=self.fit_voxel, args=(args, inputs.bvals, signal_, ijk, clicked),
                         daemon=True).start()
        self.after(10, self.poll_preview)

    def fit_voxel(self, args, bvals, signal_, ijk, clicked):
        from .api import IvimModel

        try:
            fit = IvimModel(bvals, **args.model_options).fit(signal_)
            self.preview_queue.put((fit, bvals, signal_, ijk, clicked, None))
        except (ValueError, IvimError) as err:
            self.preview_queue.put((None, bvals, signal_, ijk, clicked, err))

    def notice_compiling(self):
        if "fitting" in self.preview_status.cget("text"):
            self.preview_status.configure(text="compiling the engine (the first fit of a session only)…")

    def poll_preview(self):
        if self.preview_queue.empty():
            self.after(10, self.poll_preview)
            return
        fit, bvals, signal_, ijk, clicked, err = self.preview_queue.get()
        self.buttons["Fit voxel"].state(["!disabled"])
        if err is not None:
            self.preview_status.configure(text=f"voxel {ijk}: {err}", foreground=ERROR_COLOR)
            return
        self.preview_fit = fit
        self.draw_curve(fit, bvals, signal_, ijk)
        self.timings["preview_s"] = time.monotonic() - clicked
        self.preview_status.configure(
            text=f"voxel {ijk}: f = {float(fit.f):.3f}, D = {float(fit.D):.3g}, D* = {float(fit.Dstar):.3g} mm²/s, "
                 f"R² = {float(fit.R2):.3f}  (clicked to drawn: {1000 * self.timings['preview_s']:.0f} ms)",
            foreground="" if float(fit.exception) == 0 else ERROR_COLOR)

    def draw_curve(self, fit, bvals, signal_, ijk):
        ax = self.curve_ax
        ax.clear()
        ax.set_axis_on()
        ax.plot(bvals, signal_, "o", color="tab:blue", markersize=4, label="data")
        if float(fit.exception) == 0:
            b = np.linspace(0, bvals.max(), 200)
            ax.plot(b, np.ravel(fit.predict(b)), "-", color="tab:red", label="fit")
        ax.set_xlabel("b (s/mm²)")
        ax.set_ylabel("signal")
        ax.set_title(f"voxel {ijk}", fontsize=9)
        ax.legend(fontsize=8)
        self.canvas.draw()


class SnrFrame(ScriptFrame):
    """ivim_simu_compute_required_snr.py: the grid, the noise, the CRLB answer and Monte Carlo."""

    KEY = "snr"

    def __init__(self, master):
        super().__init__(master)
        self.add_field("b-values (s/mm²)", "-bval", width=50)
        ttk.Button(self.form, text="…", width=2, command=self.bvals_from_file).grid(row=self.row - 1, column=2)
        self.add_field("f", "-F")
        self.add_field("D* (mm²/s)", "-Dstar")
        self.add_field("D (mm²/s)", "-D")
        self.add_field("condition", "-condition", "choice", constants.CONDITIONS)
        self.add_field("max error (%)", "--max-error", width=8)
        self.add_field("approach", "-model", "choice", constants.APPROACHES, aliases=("--approach",))
        self.fields["-model"].set("one-step")
        self.add_field("method", "--method", "choice", constants.REQUIRED_SNR_METHODS)
        self.add_field("noise", "--noise", "choice", constants.NOISE_MODELS)
        self.add_field("noise draws", "--n-draws", width=8)
        self.add_field("jobs", "-j", aliases=("--jobs",), width=8)
        self.add_field("output folder", "-ofolder", browse="folder", aliases=("--ofolder",))
        self.fields["-ofolder"].set("required_snr")
        self.add_field("replace outputs", "--force", "flag")
        self.add_field("other options", "other")
        self.add_buttons(("CRLB answer", self.crlb), ("Run", self.run), ("Stop", self.stop),
                         ("Copy command", self.copy_command), ("Load command", self.load_command))
        self.add_figure()

    def bvals_from_file(self):
        from . import io

        path = filedialog.askopenfilename(parent=self)
        if path:
            try:
                self.fields["-bval"].set(",".join(f"{b:g}" for b in io.read_bvals(path)))
            except IvimError as err:
                self.say(str(err), error=True)

    def parse(self, parser, argv):
        return simu_cli.parse_compute(parser, argv)

    def check_outputs(self, args):
        from . import io, simulation

        path = simulation.result_path(args.ofolder, args.shard, run_id=args.run_id)
        io.check_outputs([path, simulation.sidecar_path(path)], args.force)

    def crlb(self):
        """The Cramér-Rao answer, in seconds: the same line with --method crlb."""
        self.fields["--method"].set("crlb")
        return self.run()

    def start(self, argv):
        self.before = set(glob.glob(os.path.join(self.fields["-ofolder"].var.get(), "sim_results_*.npz")))
        return super().start(argv)

    def add_figure(self):
        from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg

        side = self.side_panel("result")
        self.figure_choice = ttk.Combobox(side, state="readonly", width=40)
        self.figure_choice.pack(anchor="w")
        self.figure_choice.bind("<<ComboboxSelected>>", lambda _: self.draw_figure())
        self.figure_area = ttk.Frame(side)
        self.figure_area.pack(fill="both", expand=True)
        self.canvas_class, self.figures, self.canvas = FigureCanvasTkAgg, {}, None
        self.result_path = None

    def done(self):
        """Load the new result file with the toolbox's reader and draw its figures."""
        from . import io, plotting

        new = sorted(set(glob.glob(os.path.join(self.fields["-ofolder"].var.get(), "sim_results_*.npz")))
                     - self.before)
        if not new:
            return
        self.result_path = new[-1]
        arrays = io.load_results(self.result_path)
        base = os.path.splitext(self.result_path)[0]
        self.figures = {os.path.basename(path): draw
                        for path, draw in plotting.simulation_figures(arrays, base).items()}
        self.figure_choice.configure(values=list(self.figures))
        self.figure_choice.set(next(iter(self.figures)))
        self.draw_figure()

    def draw_figure(self):
        figure = self.figures[self.figure_choice.get()]()
        figure.set_dpi(80)
        if self.canvas is not None:
            self.canvas.get_tk_widget().destroy()
        self.canvas = self.canvas_class(figure, master=self.figure_area)
        self.canvas.get_tk_widget().pack(fill="both", expand=True)
        self.canvas.draw()


class ToolboxApp(tk.Tk):
    """The window: two tabs, :attr:`fit` (ivim_fitting.py) and :attr:`snr`
    (ivim_simu_compute_required_snr.py)."""

    def __init__(self):
        super().__init__(className="ivim_toolbox")
        self.title("IVIM toolbox")
        self.geometry("1250x900+0+0")
        style = ttk.Style(self)
        style.theme_use("clam")
        style.configure("Horizontal.TProgressbar", background="#3b7dd8")
        self.tabs = ttk.Notebook(self)
        self.tabs.pack(fill="both", expand=True)
        self.fit = FitFrame(self.tabs)
        self.snr = SnrFrame(self.tabs)
        self.tabs.add(self.fit, text="Fit IVIM to NIfTI data")
        self.tabs.add(self.snr, text="Required SNR")
        self.protocol("WM_DELETE_WINDOW", self.close)

    def close(self):
        for frame in (self.fit, self.snr):
            frame.stop()
            frame.wait(30)
        for pending in self.tk.splitlist(self.tk.call("after", "info")):
            self.tk.call("after", "cancel", pending)      # its command goes with its widget
        self.destroy()
