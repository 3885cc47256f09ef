"""The plugin's dock: Segment, Correct & export, and Fine-tune as three tabs of one panel."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QTabWidget

from .correction_widget import CorrectionWidget
from .finetune_widget import FineTuneWidget
from .segment_widget import SegmentWidget

if TYPE_CHECKING:  # pragma: no cover
    import napari


class DeepCeNSDock(QTabWidget):
    """One panel, three steps: segment → correct & export → fine-tune."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.segment = SegmentWidget(viewer)
        self.correct = CorrectionWidget(viewer)
        self.finetune = FineTuneWidget(viewer, segment=self.segment)
        self.addTab(self.segment.native, "Segment")
        self.addTab(self.correct.native, "Correct && export")
        self.addTab(self.finetune.native, "Fine-tune")
        # napari refreshes layer choices of magicgui widgets it docks; these are nested
        for widget in (self.segment, self.correct):
            viewer.layers.events.inserted.connect(widget.reset_choices)
            viewer.layers.events.removed.connect(widget.reset_choices)
        for widget in (self.segment, self.correct):
            widget.reset_choices()
        # the folder corrections are exported to is the one to fine-tune on, unless the
        # user chose another there
        self.correct._dataset.changed.connect(self._follow_export_folder)

    def _follow_export_folder(self, folder) -> None:
        current = self.finetune._dataset.value
        if current is None or str(current) in ("", ".") or current == self._followed:
            self.finetune._dataset.value = folder
            self._followed = folder

    _followed = None
