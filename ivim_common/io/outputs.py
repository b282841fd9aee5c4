"""Writing outputs safely, for every script: outputs checked before any work
(:func:`check_outputs`, :func:`check_output_folder`; ``--force`` replaces only the toolbox's
files), written into a temporary folder and moved into place at the end
(:func:`staged_outputs`), so an interrupted or failed run leaves nothing half-written, and one
run at a time per output folder (:func:`output_folder_lock`).  Nothing here knows about IVIM."""
import contextlib
import errno
import os
import shutil
import socket
import tempfile

from ..errors import IvimError, OutputExistsError


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
