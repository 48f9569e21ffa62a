"""Running under torchrun: the process group, which rank does what, and arrays between ranks.

A `Team` is this process's place in a torch.distributed group (gloo on CPU, NCCL on CUDA), made
from the environment torchrun sets (`from_env`). Work is split into contiguous shares
(`Team.share`); results travel as numpy arrays framed in .npy bytes (`np.save`/`np.load` with
`allow_pickle=False`: nothing is ever unpickled, also not between ranks). Rank 0 writes every
file; `root_first` runs a check there and raises the same error on every rank, so no rank waits
for a collective that will never come. docs/DESIGN.md, "Scale-out".
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from . import errors
from .errors import VaeCompressError

T = TypeVar("T")


@dataclass(frozen=True)
class Team:
    """Rank `rank` of `size` processes; `device` holds the tensors the collectives move."""

    rank: int
    size: int
    local_rank: int = 0
    local_size: int = 1
    device: str = "cpu"

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def share(self, n: int, rank: int | None = None) -> range:
        """The contiguous, near-equal share of items 0..n-1 that `rank` (default: this one) owns."""
        r = self.rank if rank is None else rank
        return range(round(r * n / self.size), round((r + 1) * n / self.size))

    # -- collectives
    def _dist(self):
        import torch.distributed as dist
        return dist

    def all_sum_(self, t: torch.Tensor) -> torch.Tensor:
        """In place: the element-wise sum over every rank (same order on every run: deterministic)."""
        self._dist().all_reduce(t, op=self._dist().ReduceOp.SUM)
        return t

    def same_everywhere(self, t: torch.Tensor) -> bool:
        """Whether `t` holds the same values on every rank."""
        hi, lo = t.detach().clone(), t.detach().clone()
        self._dist().all_reduce(hi, op=self._dist().ReduceOp.MAX)
        self._dist().all_reduce(lo, op=self._dist().ReduceOp.MIN)
        return bool(torch.equal(hi, lo))

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's `data` on every rank (the others pass None)."""
        dist = self._dist()
        n = torch.tensor([len(data) if self.is_root else 0], dtype=torch.int64, device=self.device)
        dist.broadcast(n, 0)
        buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device) if self.is_root and n.item()
               else torch.zeros(int(n.item()), dtype=torch.uint8, device=self.device))
        if n.item():
            dist.broadcast(buf, 0)
        return bytes(buf.cpu().numpy().tobytes())

    def gather_bytes(self, data: bytes) -> list[bytes] | None:
        """Every rank's `data` on rank 0, in rank order (None on the others)."""
        dist = self._dist()
        n = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.size)]
        dist.all_gather(sizes, n)
        longest = max(1, max(int(s.item()) for s in sizes))
        buf = torch.zeros(longest, dtype=torch.uint8, device=self.device)
        if data:
            buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device)
        bufs = [torch.zeros(longest, dtype=torch.uint8, device=self.device) for _ in range(self.size)] \
            if self.is_root else None
        dist.gather(buf, bufs, dst=0)
        if not self.is_root:
            return None
        return [b.cpu().numpy().tobytes()[:int(s.item())] for b, s in zip(bufs, sizes)]

    def barrier(self) -> None:
        self._dist().barrier()


def from_env(device: str = "cpu") -> Team | None:
    """The Team torchrun's environment describes (joining its process group), or None outside
    torchrun or with one process. `device` "cuda" uses NCCL on cuda:LOCAL_RANK, else gloo."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return None
    import torch.distributed as dist
    if not dist.is_available():
        raise VaeCompressError("this torch build has no torch.distributed: run without torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Team(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank, local_size=local_size,
                device=f"cuda:{local_rank}" if cuda else "cpu")


@contextlib.contextmanager
def joined(team: Team | None) -> Iterator[Team | None]:
    """Around a command's work under torchrun: on success every rank waits for the others, then
    leaves the process group (a rank leaving while another still works made gloo abort the
    process). On an error the group is left as it is: the others may be inside a collective that
    will not complete, and torchrun stops them once this rank exits."""
    yield team
    if team is not None:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- arrays as bytes


def pack_arrays(arrays: Sequence[np.ndarray]) -> bytes:
    """Arrays as bytes: a count, each array's byte length, then each array in .npy format."""
    blobs = []
    for a in arrays:
        f = io.BytesIO()
        np.save(f, np.asarray(a), allow_pickle=False)
        blobs.append(f.getvalue())
    head = np.array([len(blobs), *(len(b) for b in blobs)], dtype="<i8").tobytes()
    return head + b"".join(blobs)


def unpack_arrays(data: bytes) -> list[np.ndarray]:
    n = int(np.frombuffer(data[:8], dtype="<i8")[0])
    sizes = np.frombuffer(data[8:8 + 8 * n], dtype="<i8")
    out, at = [], 8 + 8 * n
    for s in sizes:
        out.append(np.load(io.BytesIO(data[at:at + int(s)]), allow_pickle=False))
        at += int(s)
    return out


# ----------------------------------------------------------------------------- errors across ranks


def _error_bytes(e: BaseException | None) -> bytes:
    if e is None:
        return b""
    kind = type(e).__name__ if isinstance(e, VaeCompressError) else "RuntimeError"
    return f"{kind}\n{e}".encode("utf-8", "replace")


def _raise_from_bytes(data: bytes, rank: int) -> None:
    kind, _, message = data.decode("utf-8", "replace").partition("\n")
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, VaeCompressError)):
        cls, message = VaeCompressError, f"rank {rank}: {message}"
    raise cls(message)


def root_first(team: Team | None, fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 only; if it raises a VaeCompressError, every rank raises it (the others
    get None otherwise). Without a team, just `fn()`."""
    if team is None:
        return fn()
    result, err = None, None
    if team.is_root:
        try:
            result = fn()
        except VaeCompressError as e:
            err = e
    sent = team.broadcast_bytes(_error_bytes(err) if team.is_root else None)
    if err is not None:
        raise err
    if sent:
        _raise_from_bytes(sent, 0)
    return result


def gather_results(team: Team, results: list[list[np.ndarray]] | None,
                   error: Exception | None) -> list[list[list[np.ndarray]]] | None:
    """Each rank's job results (a list of arrays per job; None with `error`) on rank 0, by rank.
    A rank's error is raised on that rank and, after the gather, on rank 0 (its own first)."""
    if error is not None:
        payload = b"E" + _error_bytes(error)
    else:
        payload = b"R" + pack_arrays([a for job in results for a in ([np.array([len(job)])] + list(job))])
    got = team.gather_bytes(payload)
    if error is not None:
        raise error
    if got is None:
        return None
    for r, data in enumerate(got):
        if data[:1] == b"E":
            _raise_from_bytes(data[1:], r)
    out = []
    for data in got:
        arrays, jobs, at = unpack_arrays(data[1:]), [], 0
        while at < len(arrays):
            k = int(arrays[at][0])
            jobs.append(arrays[at + 1:at + 1 + k])
            at += 1 + k
        out.append(jobs)
    return out
