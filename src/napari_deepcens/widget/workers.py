"""What every long-running thread worker of the widgets needs.

* :func:`stop_on_close`: closing napari while a thread worker runs deletes the widgets its
  signals would update; a late signal then touches a deleted Qt object (at best an error
  printed, at worst an abort).
* :func:`relay_warnings`: the library reports recoverable problems (NaN pixels, a grey image
  given to a colour model, skipped training samples) through :mod:`logging`, which the CLI
  prints; in napari a log line is invisible, so the worker turns them into notifications.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from superqt.utils import ensure_main_thread

_SIGNALS = ("started", "yielded", "returned", "errored", "aborted", "finished")


def stop_on_close(native, worker, after: Callable[[], None] | None = None) -> None:
    """When the Qt widget ``native`` is destroyed, disconnect ``worker``'s signals, ask it to
    stop, and run ``after`` (no widget access: e.g. remove a scratch file) once it has."""

    def closed(*_args) -> None:
        for name in _SIGNALS:
            signal = getattr(worker, name, None)
            try:
                signal.disconnect()
            except (AttributeError, TypeError, RuntimeError):
                pass
        if after is not None:
            worker.finished.connect(after)
        worker.quit()

    native.destroyed.connect(closed)

    def done() -> None:  # the window outlived the worker: forget the link
        try:
            native.destroyed.disconnect(closed)
        except (TypeError, RuntimeError):
            pass

    worker.finished.connect(done)


class _Relay(logging.Handler):
    """Re-issues the warnings logged on one thread as Python warnings."""

    def __init__(self, thread: int, prefix: str) -> None:
        super().__init__(level=logging.WARNING)
        self.thread, self.prefix = thread, prefix

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            warnings.warn(self.prefix + record.getMessage(), UserWarning, stacklevel=2)


#: The relay of each pool thread. A cancelled generator worker is abandoned, not closed, so
#: its ``finally`` may run late or never; the next worker on that pool thread replaces it.
_RELAYS: dict[int, _Relay] = {}


@contextmanager
def relay_warnings(prefix: str = "", logger: str = "napari_deepcens") -> Iterator[None]:
    """Inside a napari thread worker: library warnings logged by this thread become Python
    warnings, which napari's workers show as warning notifications. ``prefix`` names what
    they are about (e.g. the layer). Other threads' records are left alone."""
    thread = threading.get_ident()
    log = logging.getLogger(logger)
    stale = _RELAYS.pop(thread, None)
    if stale is not None:
        log.removeHandler(stale)
    handler = _RELAYS[thread] = _Relay(thread, prefix)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        if _RELAYS.get(thread) is handler:
            del _RELAYS[thread]


@ensure_main_thread
def _notify(args: tuple) -> None:
    from napari.utils.notifications import notification_manager

    notification_manager.receive_warning(*args)


def show_warnings(worker) -> None:
    """Show the Python warnings raised inside ``worker`` as napari notifications, on the GUI
    thread. napari's workers mean to do this themselves, but their notifying mixin is never
    initialised (napari 0.9.2: it comes after QRunnable in the MRO); the notification
    manager drops an identical repeat, so a fixed napari does not show them twice."""
    worker.warned.connect(_notify)
