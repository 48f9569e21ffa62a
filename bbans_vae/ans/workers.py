"""Running independent jobs (groups of chains) in worker processes, with one progress stream.

Workers are forked, so they share the parent's loaded model, networks and input pixels
(copy-on-write) and start in milliseconds; arrays a job writes into a `shared_array` are seen by
the parent. Workers ignore SIGINT: Ctrl-C reaches the parent, which terminates every worker
before the exception propagates (callers write output files only after success). Where `fork`
is not available everything runs in this process.
"""
from __future__ import annotations

import functools
import mmap
import multiprocessing as mp
import os
import signal
import traceback
from typing import Any, Callable, Sequence

import numpy as np

Progress = Callable[[int], None]
Job = Callable[[Progress], Any]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                                    # not on Linux
        return max(1, os.cpu_count() or 1)


def can_fork() -> bool:
    return "fork" in mp.get_all_start_methods()


def shared_array(shape: tuple, dtype) -> np.ndarray:
    """A zeroed array in anonymous shared memory: forked workers' writes are visible here."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = mmap.mmap(-1, max(1, size))
    return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def _child(job: Job, k: int, queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)            # the parent handles Ctrl-C
    try:
        result = job(lambda n: queue.put(("progress", k, n)))
        queue.put(("done", k, result))
    except BaseException as e:                              # report, never hang the parent
        try:
            queue.put(("error", k, e))
        except Exception:
            queue.put(("error", k, RuntimeError("".join(traceback.format_exception(e)))))


def run_jobs(jobs: Sequence[Job], progress: Progress | None = None,
             job_progress: Callable[[int, int], None] | None = None) -> list:
    """Run `jobs` (each called with a progress callback) in parallel processes; their results in
    order. One job (or no fork) runs here. `job_progress(k, n)`, if given, is called in this
    process for every progress report of job k (in the order each job sent them) and may raise.
    The first error in any job or callback is raised here after all workers are stopped."""
    def report(k: int, n: int) -> None:
        if job_progress is not None:
            job_progress(k, n)
        if progress is not None:
            progress(n)
    if len(jobs) == 1 or not can_fork():
        return [job(functools.partial(report, k)) for k, job in enumerate(jobs)]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(job, k, queue), daemon=True) for k, job in enumerate(jobs)]
    results: list = [None] * len(jobs)
    try:
        for p in procs:
            p.start()
        pending = len(jobs)
        while pending:
            try:
                kind, k, value = queue.get(timeout=1.0)
            except Exception:                               # queue.Empty: check for dead workers
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a worker process died (exit code {dead[0].exitcode})") from None
                continue
            if kind == "progress":
                report(k, value)
            elif kind == "done":
                results[k] = value
                pending -= 1
            else:
                raise value
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
        queue.close()
    return results


def run_team_jobs(jobs: Sequence[Job], team, progress: Progress | None = None,
                  to_arrays: Callable[[Any], list] = list, from_arrays: Callable[[list], Any] = list) -> list | None:
    """`run_jobs` spread over the ranks of a torchrun `team` (`distributed.Team`): each rank runs
    its contiguous share of `jobs` (in forked workers, as `run_jobs`), and rank 0 gets every
    result in order (None on the other ranks). Results cross ranks as arrays: `to_arrays(result)`
    makes a list of numpy arrays, `from_arrays(list)` the result again. `progress` counts this
    rank's share. An error on any rank is raised on that rank and on rank 0."""
    from ..distributed import gather_results
    mine = team.share(len(jobs))
    local, error = None, None
    try:
        local = [to_arrays(r) for r in run_jobs([jobs[k] for k in mine], progress)] if len(mine) else []
    except Exception as e:                                  # sent to rank 0, then raised here too
        error = e
    got = gather_results(team, local, error)
    return None if got is None else [from_arrays(job) for rank_jobs in got for job in rank_jobs]
