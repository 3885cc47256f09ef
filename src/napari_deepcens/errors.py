"""User-facing errors.

Everything the user can get wrong (a bad image, a weights file for another model, an
unwritable output folder) raises :class:`DeepCeNSError` with a message that names the bad
value and what was expected. The CLI prints it and exits non-zero; the widget shows it as a
napari notification. Anything else is a bug and keeps its traceback.
"""


class DeepCeNSError(ValueError):
    """An error caused by user input, with a message meant for the user."""


class ImageError(DeepCeNSError):
    """The image cannot be read or is not something we can segment."""


class WeightsError(DeepCeNSError):
    """A weights file is missing, corrupt or belongs to another model."""
