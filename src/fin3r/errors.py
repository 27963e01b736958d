"""Exceptions the CLI reports as one clear line (run with --debug for the traceback)."""


class Fin3rError(Exception):
    """Base class for expected, user-facing errors (bad file, bad config, bad input)."""


class CheckpointError(Fin3rError, ValueError):
    """A checkpoint or adapter file that cannot be loaded as asked (names the file and key)."""


class InputError(Fin3rError, ValueError):
    """Input data (image size, tensor shape, data set layout) that does not fit the contract."""
