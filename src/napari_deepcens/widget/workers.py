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


class RelayedWarning(UserWarning):
    """A library warning re-issued inside a thread worker for the user to see."""


class _Relay(logging.Handler):
    """One handler on the package logger for every worker thread: a record logged on a
    thread that :func:`relay_warnings` registered becomes a :class:`RelayedWarning`; other
    threads' records go on as if it were not there (to ``logging.lastResort`` when nothing
    else would print them, as without this handler)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        #: thread id → (owner token, prefix). A cancelled generator worker is abandoned, not
        #: closed, so its ``finally`` may run late or never: the next worker on that pool
        #: thread takes the entry over, and a late ``finally`` only removes its own.
        self.threads: dict[int, tuple[object, str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        entry = self.threads.get(record.thread)
        if entry is not None:
            warnings.warn(entry[1] + record.getMessage(), RelayedWarning, stacklevel=2)
        elif not _other_handlers(logging.getLogger(record.name)) and logging.lastResort:
            logging.lastResort.handle(record)


def _other_handlers(log: logging.Logger | None) -> bool:
    """Whether a handler other than the relay would receive records of ``log``."""
    while log is not None:
        if any(h is not _RELAY for h in log.handlers):
            return True
        log = log.parent if log.propagate else None
    return False


_RELAY = _Relay()
_RELAY_LOCK = threading.Lock()


@contextmanager
def relay_warnings(prefix: str = "", logger: str = "napari_deepcens") -> Iterator[None]:
    """Inside a napari thread worker: library warnings logged by this thread become
    :class:`RelayedWarning` warnings, which :func:`show_warnings` shows as napari
    notifications. ``prefix`` names what they are about (e.g. the layer)."""
    thread, token = threading.get_ident(), object()
    log = logging.getLogger(logger)
    with _RELAY_LOCK:
        _RELAY.threads[thread] = (token, prefix)
        if _RELAY not in log.handlers:
            log.addHandler(_RELAY)
    try:
        yield
    finally:
        with _RELAY_LOCK:
            if _RELAY.threads.get(thread, (None,))[0] is token:
                del _RELAY.threads[thread]
            if not _RELAY.threads:
                log.removeHandler(_RELAY)


def show_warnings(worker) -> None:
    """Show the :class:`RelayedWarning` warnings raised inside ``worker`` as napari warning
    notifications, each message once per run (not once per napari session, as napari's
    ``receive_warning`` would: the same NaN image run twice is said twice). Other warnings
    raised in the worker (a dependency's deprecation notes) are not the user's business.
    napari's own relay of worker warnings is not connected in napari 0.9.2 (its mixin comes
    after QRunnable in the MRO and is never initialised)."""
    seen: set[str] = set()

    @ensure_main_thread
    def notify(args: tuple) -> None:
        from napari.utils.notifications import show_warning

        message, category = str(args[0]), args[1]
        if issubclass(category, RelayedWarning) and message not in seen:
            seen.add(message)
            show_warning(message)

    worker.warned.connect(notify)
