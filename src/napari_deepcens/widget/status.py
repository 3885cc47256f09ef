"""A status line that wraps instead of widening the dock.

A long message (an error naming a weights file, a path to an export) in a plain label would
widen the dock until the image canvas is squeezed to nothing; this one wraps at spaces, gives
up width it does not have (a long path is clipped, not enforced) and shows its full text as a
tooltip.
"""

from __future__ import annotations

from magicgui.widgets import Label
from qtpy.QtWidgets import QSizePolicy


class StatusLabel(Label):
    """A Label whose full text is also its tooltip (long lines are clipped on screen)."""

    @property
    def value(self):
        return Label.value.fget(self)

    @value.setter
    def value(self, text) -> None:
        Label.value.fset(self, text)
        self.native.setToolTip(str(text))


def status_label(label: str = "status", value: str = "") -> StatusLabel:
    """A status line that never dictates the dock's width."""
    widget = StatusLabel(label=label, value=value)
    native = widget.native
    native.setWordWrap(True)
    native.setMinimumWidth(80)
    native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    native.setToolTip(value)
    return widget
