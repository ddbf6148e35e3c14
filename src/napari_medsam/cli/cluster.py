"""The dask.distributed engine of ``embed`` and ``batch``: a cluster, and one predictor per worker.

``--workers N`` starts a local cluster of N worker processes (one task thread each) on
127.0.0.1; ``--scheduler ADDRESS`` connects to an existing cluster (dask-jobqueue, dask-kubernetes,
``dask scheduler`` / ``dask worker``) and runs the same tasks there. Each worker process loads
the model once, on its first task (:class:`PredictorPlugin`), with ``cores // workers on its
host`` torch threads. A worker that dies has its tasks run again elsewhere by the scheduler.

Imported only by the commands that run (dask is an optional dependency).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from napari_medsam.base.errors import import_extra
from napari_medsam.engine.cache import DEFAULT_MAX_BYTES

distributed = import_extra("distributed", "running on a dask cluster")

if TYPE_CHECKING:
    from distributed import Client, Worker

    from napari_medsam.engine.predictor import MedSamPredictor

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def open_client(args: argparse.Namespace) -> Iterator[Client]:
    """A client of ``args.scheduler``, or of a local cluster of ``args.workers`` processes."""
    if not logging.getLogger().isEnabledFor(logging.INFO):  # dask's start-up chatter only with -v
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if args.scheduler:
        with distributed.Client(args.scheduler) as client:
            yield client
        return
    workers = args.workers or _cpu_count()
    with (
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,  # no dashboard; its HTTP endpoint on 127.0.0.1, any free port
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@dataclass(frozen=True)
class PredictorSpec:
    """What every worker loads: the model options of the command, the store, the memory cache size."""

    model: str
    device: str
    dtype: str
    store: str | None
    cache_bytes: int = DEFAULT_MAX_BYTES
    backend: str = "auto"


class PredictorPlugin(distributed.WorkerPlugin):
    """Holds one worker process's predictor, loaded on first use (not in ``setup``, which runs on
    the worker's event loop), with torch threads = the host's cores // its worker processes."""

    def __init__(self, spec: PredictorSpec, workers_by_host: dict[str, int]) -> None:
        self.spec = spec
        self.workers_by_host = workers_by_host

    def setup(self, worker: Worker) -> None:
        host = distributed.comm.get_address_host(worker.address)
        self._threads = max(1, _cpu_count() // self.workers_by_host.get(host, 1))
        self._lock = threading.Lock()
        self._predictor: MedSamPredictor | None = None

    def predictor(self) -> MedSamPredictor:
        """This process's predictor, loading the model on the first call."""
        with self._lock:
            if self._predictor is None:
                import torch

                from napari_medsam.engine.cache import EmbeddingCache
                from napari_medsam.engine.predictor import MedSamPredictor

                torch.set_num_threads(self._threads)
                spec = self.spec
                self._predictor = MedSamPredictor.from_pretrained(
                    spec.model,
                    device=spec.device,
                    dtype=spec.dtype,
                    cache=EmbeddingCache(spec.cache_bytes),
                    store=spec.store,
                    backend=spec.backend,
                )
            return self._predictor


@contextlib.contextmanager
def predictors(client: Client, spec: PredictorSpec) -> Iterator[str]:
    """Register a :class:`PredictorPlugin` on every worker (and those that join); yields its name."""
    workers = client.scheduler_info()["workers"]
    hosts = Counter(distributed.comm.get_address_host(address) for address in workers)
    name = f"napari-medsam-{uuid.uuid4().hex[:8]}"
    client.register_plugin(PredictorPlugin(spec, dict(hosts)), name=name)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):  # the cluster may be gone already
            client.unregister_worker_plugin(name)


def worker_predictor(plugin: str) -> MedSamPredictor:
    """Inside a task: the predictor of the worker process running it."""
    return distributed.get_worker().plugins[plugin].predictor()


def task_key(kind: str) -> str:
    """A key prefix for one run's tasks of ``kind`` (unique, readable in the dashboard)."""
    return f"napari-medsam-{kind}-{uuid.uuid4().hex[:8]}"


def one_line(error: BaseException) -> str:
    """An error as one line: the message a user can act on, else its type and message."""
    from napari_medsam.base.jobs import user_message

    text = user_message(error) or f"{type(error).__name__}: {error}"
    return " ".join(text.split()) or type(error).__name__


def _cpu_count() -> int:
    """Cores this process may use (affinity and cgroup limits included)."""
    from dask.system import CPU_COUNT

    return CPU_COUNT
