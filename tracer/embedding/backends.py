"""Where a batch's fine-tunes run: worker processes on this machine, or the tasks of a Ray cluster.

A batch (:meth:`.Issuer.issue_many`) splits each issuance in two. The driver, the one process
that unlocked the keys, derives the customer's material (its codeword and the shared trigger
inputs), then later checks the gates, lands the file and writes the ledger entry: one writer,
the landing protocol of :mod:`.landing`, the same records as one-by-one issuance. A worker gets
an :class:`EmbedJob` (that material, the workspace's configuration and the fingerprints of the
base model and data it must load) and returns an :class:`EmbedOutcome` (the ONNX bytes and
metrics): it fine-tunes, gates, exports and checks, and never sees the master secret or the
signing key, and writes nothing. A worker that dies therefore leaves nothing to undo.

A backend is anything with ``workers`` (how many jobs run at once), ``submit(job) -> Future``
(a :class:`concurrent.futures.Future` of an :class:`EmbedOutcome`) and ``close()``:
:class:`LocalBackend` (spawned processes) and :class:`RayBackend` (``pip install 'tracer[ray]'``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .. import errors
from ..errors import ConfigError, ModelError, TracerError, UsageError

if TYPE_CHECKING:
    from ..config import Config
    from .issue import CopyMaker, _Copy

__all__ = ["Backend", "EmbedJob", "EmbedOutcome", "LocalBackend", "RayBackend", "open_backend", "run_job", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class EmbedJob:
    """Everything a worker needs for one customer's copy, and nothing secret.

    ``labels`` is the customer's codeword (``rank_mass`` its rank code) and ``triggers`` the shared trigger inputs, all derived
    by the driver; the worker loads the base model and data from ``config`` and refuses them unless
    they are the ones the driver measured (``base_sha256``, ``dataset_fingerprint``).
    """

    customer_id: str
    labels: np.ndarray
    triggers: np.ndarray
    config: Config
    base_sha256: str
    dataset_fingerprint: str
    base_accuracy: float
    threads: int = 1
    rank_mass: np.ndarray | None = None  # the customer's rank code as coded wrong-class mass (None: the copy carries none)


@dataclass
class EmbedOutcome:
    """A worker's answer: the best copy's record (no model), its tries, and its ONNX bytes (None when it misses a gate)."""

    customer_id: str
    copy: _Copy
    attempts: int
    onnx: bytes | None
    max_diff: float
    error: tuple[str, str, dict] | None = None  # a library error raised in the worker: (class name, message, attributes)
    cpu_seconds: float = 0.0  # the worker's CPU time for this job (recorded as issuance_cpu_seconds)
    threads: int = 1  # the torch threads it fine-tuned with (recorded as embedding.threads)

    def raise_error(self) -> None:
        """Re-raise the worker's library error here, as the same class (their constructors differ, so not by pickling)."""
        if self.error is None:
            return
        name, message, attrs = self.error
        cls = getattr(errors, name, TracerError)
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        exc.__dict__.update(attrs)
        raise exc


_MAKERS: dict[tuple, CopyMaker] = {}  # per worker process: the last workspace's base model and data, loaded once


def _maker(job: EmbedJob) -> CopyMaker:
    """The process's :class:`.CopyMaker` for the job's workspace, loaded on first use and checked against the driver's."""
    from ..data import load_dataset
    from .basemodel import base_model_sha256, load_base_model
    from .issue import CopyMaker

    key = (str(job.config.root), job.base_sha256, job.dataset_fingerprint, hashlib.sha256(job.triggers.tobytes()).hexdigest())
    if key not in _MAKERS:
        _MAKERS.clear()
        if base_model_sha256(job.config) != job.base_sha256:
            raise ModelError("the base model weights changed while the batch ran; nothing was recorded for this customer",
                             hint="rerun the batch: issued customers are skipped")
        data = load_dataset(job.config)
        if data.fingerprint() != job.dataset_fingerprint:
            raise ConfigError("the data the worker loaded differ from the driver's (a nondeterministic data.loader?)",
                              hint="make data.loader return the same arrays on every call")
        _MAKERS[key] = CopyMaker(job.config, base=load_base_model(job.config), data=data, triggers=job.triggers,
                                 base_accuracy=job.base_accuracy)
    return _MAKERS[key]


def run_job(job: EmbedJob) -> EmbedOutcome:
    """The worker's whole part of one issuance: fine-tune, gate, export, check (in ``job.threads`` torch threads)."""
    import torch

    torch.set_num_threads(job.threads)
    c0 = time.process_time()
    try:
        best, attempts, onnx, max_diff = _maker(job).make_copy(job.customer_id, job.labels, rank_mass=job.rank_mass)
    except TracerError as exc:
        return EmbedOutcome(job.customer_id, None, 0, None, float("nan"),  # type: ignore[arg-type]
                            error=(type(exc).__name__, exc.message, dict(exc.__dict__)))
    return EmbedOutcome(job.customer_id, replace(best, model=None), attempts, onnx, max_diff,  # type: ignore[arg-type]  # the model stays here
                        cpu_seconds=round(time.process_time() - c0, 3), threads=job.threads)


class Backend(Protocol):
    """Runs :class:`EmbedJob`\\ s: ``workers`` at once, each ``submit`` answered by a future :class:`EmbedOutcome`."""

    workers: int

    def submit(self, job: EmbedJob) -> Future: ...

    def close(self) -> None: ...


def _init_worker(threads: int) -> None:
    """Before torch loads in a spawned worker: its thread pools get the worker's share of the cores."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)


class LocalBackend:
    """``workers`` spawned processes on this machine, each fine-tuning with ``threads`` torch threads.

    ``threads`` defaults to an equal share of the usable cores. ``fn`` is the job function (a test
    may wrap :func:`run_job`); it must be importable by name, as spawned processes import it.
    A worker that dies breaks the pool: every job in flight then fails, and nothing of theirs is recorded.
    """

    def __init__(self, *, workers: int, threads: int | None = None, fn: Callable[[EmbedJob], EmbedOutcome] = run_job) -> None:
        if workers < 1:
            raise UsageError(f"--workers {workers}: need at least 1")
        self.workers = workers
        self.threads = threads or max(1, usable_cores() // workers)
        self._fn = fn
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                         initializer=_init_worker, initargs=(self.threads,))

    def submit(self, job: EmbedJob) -> Future:
        return self._pool.submit(self._fn, replace(job, threads=self.threads))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayBackend:
    """Jobs as Ray tasks, on a local cluster (``address=None``) or an existing one (``"auto"``, ``"ray://host:10001"``).

    Each task asks Ray for ``threads`` CPUs and runs that many torch threads; ``workers`` (default:
    the cluster's CPUs over ``threads``) bounds the tasks in flight. Workers write nothing, so a
    task whose worker is lost is retried by Ray (``retries`` times) before the batch reports it.
    Every node needs tracer installed and the workspace folder at the same path (its keys are never read).
    """

    def __init__(self, *, address: str | None = None, workers: int | None = None, threads: int = 1, retries: int = 2,
                 fn: Callable[[EmbedJob], EmbedOutcome] = run_job) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("--backend ray needs Ray, which is not installed", hint="pip install 'tracer[ray]'") from exc
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or max(1, cpus // threads)
        self.threads = threads
        self._task = ray.remote(num_cpus=threads, max_retries=retries)(fn)

    def submit(self, job: EmbedJob) -> Future:
        return self._task.remote(replace(job, threads=self.threads)).future()

    def close(self) -> None:
        if self._owns:
            self._ray.shutdown()


def open_backend(kind: str, *, workers: int | None, jobs: int, address: str | None = None) -> Any:
    """The backend ``kind`` (``local`` or ``ray``) for ``jobs`` jobs: never more local workers than jobs or than asked for."""
    if kind == "local":
        if address is not None:
            raise UsageError("--address applies to --backend ray")
        return LocalBackend(workers=max(1, min(workers or usable_cores(), jobs)))
    if kind == "ray":
        return RayBackend(address=address, workers=workers)
    raise UsageError(f"--backend {kind}: choose local or ray")
