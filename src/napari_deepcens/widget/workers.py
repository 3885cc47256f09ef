"""Long work that outlives its window: stop it and cut its links to the deleted widgets.

Closing napari while a thread worker runs deletes the widgets its signals would update; a
late signal then touches a deleted Qt object (at best an error printed, at worst an abort).
"""

from __future__ import annotations

from collections.abc import Callable

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
