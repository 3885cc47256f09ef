"""Fine-tune the current model on an exported dataset, inside napari.

Training runs in a thread worker with a progress bar, a running loss and Cancel. The new weights
get a new file name (never the bundled file, never an existing file); when training ends they
are loaded into the segmentation widget. A cancelled run leaves the weights saved at the last
completed epoch, if any, and nothing else changes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import Container, FileEdit, ProgressBar, PushButton, SpinBox
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info

from ..errors import DeepCeNSError
from .status import status_label
from .workers import relay_warnings, show_warnings, stop_on_close

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from .segment_widget import SegmentWidget

log = logging.getLogger(__name__)


def default_output(dataset: Path, model: str) -> Path:
    """A fresh weights path inside the dataset folder: ``models/<model>-<time>.safetensors``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = dataset / "models" / f"{model}-finetuned-{stamp}.safetensors"
    n = 1
    while path.exists():
        n += 1
        path = path.with_name(f"{model}-finetuned-{stamp}-{n}.safetensors")
    return path


@thread_worker
def _train_worker(dataset: Path, output: Path, init: Path, model: str, epochs: int, steps: int):
    from ..models.weights import read_info
    from ..training.augment import AugmentConfig
    from ..training.dataset import load_folder
    from ..training.loop import TrainConfig, train_iter

    try:
        info = read_info(init)
        if info.model != model:  # would silently train a fresh network beside the given body
            raise DeepCeNSError(f"{init.name} holds weights for model {info.model!r}, not "
                                f"{model!r}: choose the {info.model!r} model or other weights")
        channels = int(info.config.get("in_channels", 1))
        if model == "deepcens":  # a detector: fewer, larger crops and a gentler step
            config = TrainConfig(epochs=epochs, steps_per_epoch=steps, lr=1e-4, batch_size=2,
                                 augment=AugmentConfig(crop=256))
        else:
            config = TrainConfig(epochs=epochs, steps_per_epoch=steps, lr=5e-4)
        # skipped samples and the zoom to the model's object size are said in napari
        with relay_warnings(f"{dataset.name}: "):
            items = load_folder(dataset, channels=channels)
            yield from train_iter(items, output, model_name=model, config=config, init=init,
                                  resume=False)
        return output
    except DeepCeNSError as exc:
        return str(exc)
    except Exception as exc:  # a message in napari, the traceback in the log
        log.exception("fine-tuning failed")
        return f"fine-tuning failed ({type(exc).__name__}): {exc}"


class FineTuneWidget(Container):
    """Dataset folder, epochs, Train / Cancel, progress and loss."""

    _preset: str | None = None  # the Segment tab's model when the run started

    def __init__(self, viewer: napari.viewer.Viewer, segment: SegmentWidget | None = None) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._segment = segment
        self._dataset = FileEdit(label="dataset folder", mode="d", value=None, nullable=True)
        self._epochs = SpinBox(label="epochs", value=5, min=1, max=500)
        self._steps = SpinBox(label="steps per epoch", value=100, min=1, max=10_000)
        self._train = PushButton(text="Fine-tune")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self._loss = status_label(label="loss", value="–")
        self._status = status_label(value="starts from the weights chosen for segmenting")
        self.extend([self._dataset, self._epochs, self._steps, self._train, self._cancel,
                     self._progress, self._loss, self._status])
        self.native.layout().addStretch(1)  # rows stay together at the top of a tall tab
        self._worker = None
        self._output: Path | None = None
        self._train.changed.connect(self.start)
        self._cancel.changed.connect(self.cancel)

    def _base(self) -> tuple[str, Path]:
        """Model name and weights the segmentation widget would use now."""
        from ..models.registry import bundled_weights, get_preset

        if self._segment is None:
            return "unet", bundled_weights("unet")
        preset = get_preset(self._segment._model.value)  # e.g. cells: a DeepCeNS
        return preset.model, self._segment.chosen_weights() or bundled_weights(preset.name)

    def start(self) -> None:
        if self._worker is not None:
            return
        dataset = self._dataset.value
        if dataset is None or not Path(dataset).is_dir() or str(dataset) in ("", "."):
            self._fail("choose a dataset folder (made with 'Export image + labels')")
            return
        model, init = self._base()
        self._preset = self._segment._model.value if self._segment is not None else None
        self._output = default_output(Path(dataset), model)
        total = int(self._epochs.value) * int(self._steps.value)
        self._progress.max, self._progress.value = total, 0
        self._status.value = f"fine-tuning {init.name} → {self._output.name}"
        worker = _train_worker(Path(dataset), self._output, init, model, int(self._epochs.value),
                               int(self._steps.value))
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_done)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        checkpoint = self._output.with_name(self._output.name + ".ckpt")
        stop_on_close(self.native, worker, after=lambda: checkpoint.unlink(missing_ok=True))
        show_warnings(worker)
        self._train.enabled, self._cancel.enabled = False, True
        worker.start()

    def cancel(self) -> None:
        if self._worker is not None:
            self._status.value = "cancelling after this step…"
            self._worker.quit()

    def _on_progress(self, progress) -> None:
        self._progress.value = progress.step
        self._loss.value = f"{progress.loss:.4f} (epoch {progress.epoch})"

    def _on_done(self, result) -> None:
        if isinstance(result, str):
            self._fail(result)
        elif result is not None:
            self._use(result, f"done: weights saved to {result}")

    def _on_aborted(self) -> None:
        if self._output is not None and self._output.exists():
            self._use(self._output, f"cancelled; weights of the last full epoch: {self._output}")
        else:
            self._status.value = "cancelled before the first epoch ended: nothing saved"

    def _use(self, weights: Path, message: str) -> None:
        """Load the new weights for segmenting, if the Segment tab still has the model they
        were trained for (it may have been switched meanwhile: loading them there would make
        every Run fail)."""
        if self._segment is not None:
            if self._segment._model.value == self._preset:
                self._segment._weights.value = weights
            else:
                from ..models.registry import PRESETS

                message += (f"; they are for {PRESETS[self._preset].label}: choose that model and "
                            "these weights to use them")
        self._status.value = message
        show_info(message)

    def _on_finished(self) -> None:
        # the resume checkpoint is for the CLI; here a run is never resumed. Removed here, not
        # in the worker: a cancelled generator is not closed until it is garbage-collected.
        if self._output is not None:
            self._output.with_name(self._output.name + ".ckpt").unlink(missing_ok=True)
        self._worker = None
        self._train.enabled, self._cancel.enabled = True, False

    def _fail(self, message: str) -> None:
        self._status.value = message
        show_error(message)

    @property
    def status(self) -> str:
        return str(self._status.value)
