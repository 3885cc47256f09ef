"""The Dask client every scaled-out run uses: local by default, or an existing cluster.

``address`` is any ``dask.distributed`` scheduler address (``tcp://host:8786``): clusters
started with dask-jobqueue (SLURM, PBS, …) or dask-kubernetes are used as they are. Without
it, a local cluster on this machine: in-process threads (the loaded network is shared, no
data is copied between processes) or, with ``workers`` > 1, that many worker processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import DeepCeNSError

log = logging.getLogger(__name__)
#: How long to keep trying to reach a scheduler before giving up with a clear message.
CONNECT_TIMEOUT = "10s"


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def local_processes(workers: int, threads: int = 1, memory_limit: str = "auto"):
    """A LocalCluster of ``workers`` processes sharing this machine's cores between them (torch
    in each process would otherwise start one thread per core, and they would fight)."""
    from distributed import LocalCluster

    per_worker = max(1, cores() // (workers * threads))
    return LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                        dashboard_address=":0", memory_limit=memory_limit,
                        env={"DEEPCENS_TORCH_THREADS": str(per_worker), "OMP_NUM_THREADS": str(per_worker)})


@contextmanager
def dask_client(address: str | None = None, workers: int = 0, threads: int | None = None,
                memory_limit: str | None = None) -> Iterator:
    """A ``distributed.Client``, closed (with its local cluster) on exit.

    Raises :class:`DeepCeNSError` when the scheduler at ``address`` cannot be reached.
    """
    import torch
    from distributed import Client, LocalCluster

    from . import chunked

    torch_threads = torch.get_num_threads()
    if not logging.getLogger().isEnabledFor(logging.INFO):  # deepcens -v shows Dask's log
        for name in ("distributed", "distributed.scheduler", "distributed.worker", "distributed.core",
                     "distributed.http.proxy"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # "Worker process still alive after 4 s, killing": routine at shutdown, not a problem
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    cluster = None
    if address:
        try:
            # not dask's default scheduler: napari's lazily read layers keep theirs
            client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise DeepCeNSError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
    else:
        if workers and workers > 1:
            cluster = local_processes(workers, threads or 1, memory_limit or "auto")
        else:
            cluster = LocalCluster(n_workers=1, threads_per_worker=threads or min(cores(), 4),
                                   processes=False, dashboard_address=":0")
        client = Client(cluster, set_as_default=False)  # (as above)
    try:
        with client.as_current():  # the current client of this thread only (Dask's futures
            yield client           # need one), not the default of napari's drawing thread
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        torch.set_num_threads(torch_threads)  # in-process workers split this process's threads
        chunked._THREADS_SET = False
