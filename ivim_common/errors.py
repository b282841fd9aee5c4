"""The exception types a user can see: each carries one line that names the problem."""


class IvimError(Exception):
    """A user error (bad input, refused output): printed as one line on stderr, exit code 1."""


class InputError(IvimError):
    """An input file is missing, unreadable, or inconsistent with the others."""


class UsageError(IvimError):
    """Options that cannot work with these inputs (e.g. --prior spatial on a one-voxel mask):
    exit code 2, as the command line's other usage errors."""


class OutputExistsError(IvimError):
    """An output already exists and --force was not given."""


class WorkerDiedError(IvimError):
    """A worker process died (killed, out of memory, crashed): the run stops, nothing is written."""


class WorkerStartError(WorkerDiedError):
    """Worker processes could not start: each re-runs the main module (the ``spawn`` start
    method), which a script read from standard input, or one that fits at import, does not allow."""
