"""Where a build's tasks run: a pool of local worker processes, or a Dask distributed cluster.

Both run the same task functions and yield results as tasks finish, so the build has one code
path. The build hands big arguments (images) to `share` first: locally that is the data itself,
on Dask it is scattered to the workers once instead of travelling with every task."""

from __future__ import annotations

import multiprocessing
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor as _PoolExecutor
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")

# How long a Dask client waits for the scheduler to answer and for its first worker.
DASK_TIMEOUT_S = 30.0


def default_workers() -> int:
    """One local worker per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class FarmError(Exception):
    """The farm itself failed (unreachable scheduler, no workers, a worker died): one line for the user."""


class Executor(ABC):
    """Runs calls of one function somewhere and yields (call index, result) as they finish."""

    description: str  # for people: "2 local processes", "Dask cluster at tcp://…: 4 workers"

    def share(self, data: bytes) -> Any:
        """A handle to pass to tasks in place of data (which reaches each worker once)."""
        return data

    @abstractmethod
    def run(self, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, T]]:
        """fn(*call) for every call, in any order; an exception of fn is raised here."""

    @abstractmethod
    def close(self) -> None:
        """Stop; tasks not yet started are dropped."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class LocalPool(Executor):
    """Worker processes on this machine (threads with processes=False, kept for the benchmark:
    benchmarks/build_farm.py measures both)."""

    def __init__(self, workers: int, *, processes: bool = True) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        self._pool: _PoolExecutor
        if processes:
            # Not fork: the parent may run threads (the progress bar), which fork does not copy safely.
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
            self.description = f"{workers} local process{'es' if workers > 1 else ''}"
        else:
            self._pool = ThreadPoolExecutor(workers)
            self.description = f"{workers} local thread{'s' if workers > 1 else ''}"

    def run(self, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, T]]:
        futures = {self._pool.submit(fn, *call): i for i, call in enumerate(calls)}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BrokenProcessPool:
            raise FarmError("a worker process died (out of memory or killed)") from None
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class DaskCluster(Executor):
    """The workers of a Dask distributed scheduler (`dask-scheduler`, `dask-worker`, or a
    LocalCluster); each needs fotadelta installed, the same build as here."""

    def __init__(self, address: str, *, timeout: float = DASK_TIMEOUT_S) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise FarmError("a Dask scheduler needs dask.distributed: pip install 'fotadelta[farm]'") from None
        try:
            self._client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, ValueError) as exc:
            raise FarmError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        try:
            self._client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            self._client.close()
            raise FarmError(f"the Dask scheduler at {address} has no workers") from None
        self.description = f"Dask cluster at {address}: {len(self._client.nthreads())} workers"

    def share(self, data: bytes) -> Any:
        return self._client.scatter(data)

    def run(self, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, T]]:
        from distributed import KilledWorker
        from distributed import as_completed as dask_completed
        futures = [self._client.submit(fn, *call, pure=False) for call in calls]
        index = {future.key: i for i, future in enumerate(futures)}
        try:
            for future in dask_completed(futures, loop=self._client.loop):
                yield index[future.key], future.result()
        except KilledWorker as exc:  # Dask retried the task on other workers, and they died too
            raise FarmError(f"Dask workers died running a delta: {exc}") from None
        finally:
            self._client.cancel(futures)

    def close(self) -> None:
        self._client.close()
