"""Exceptions with messages meant for users (CLI prints them on one line, napari notifies)."""


class CytoDiffusionError(Exception):
    """Base class for errors caused by user input, shown without a traceback."""


class InputError(CytoDiffusionError, ValueError):
    """An image, table or argument that cannot be used as given."""


class ModelError(CytoDiffusionError):
    """A model folder that is missing, corrupt, or does not match what it is used with."""


class Cancelled(CytoDiffusionError):
    """Raised inside a long computation when the user asked to stop it."""
