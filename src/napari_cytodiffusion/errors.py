"""Exceptions with messages meant for users (CLI prints them on one line, napari notifies)."""


class CytoDiffusionError(Exception):
    """Base class for errors caused by user input, shown without a traceback."""


class InputError(CytoDiffusionError, ValueError):
    """An image, table or argument that cannot be used as given."""


class ModelError(CytoDiffusionError):
    """A model folder that is missing, corrupt, or does not match what it is used with."""


class Cancelled(CytoDiffusionError):
    """Raised inside a long computation when the user asked to stop it."""


def check_settings(
    settings: object,
    *,
    at_least_1: tuple[str, ...] = (),
    positive: tuple[str, ...] = (),
    non_negative: tuple[str, ...] = (),
    fractions: tuple[str, ...] = (),
) -> None:
    """Refuse hyper-parameters a run cannot use, naming the first one (fields set to ``None`` pass).

    ``fractions`` must lie in [0, 1). Raises :class:`InputError`.
    """
    rules = (
        (at_least_1, lambda v: v >= 1, "at least 1"),
        (positive, lambda v: v > 0, "positive"),
        (non_negative, lambda v: v >= 0, "0 or more"),
        (fractions, lambda v: 0 <= v < 1, "from 0 up to (not including) 1"),
    )
    for names, ok, what in rules:
        for name in names:
            value = getattr(settings, name)
            if value is not None and not ok(value):
                raise InputError(f"{name.replace('_', ' ')} must be {what}, got {value:g}")
