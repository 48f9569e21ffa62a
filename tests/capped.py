"""Run one `vaecompress` command in a forked child with its time and memory measured and capped.

The child is forked from the test process (torch already imported), so a case costs only its own
work. Measured per case: CPU seconds (user + system, from wait4) and peak RSS; the child's RSS at
the fork (the interpreter, torch and the test harness it inherits) is reported separately, and
`extra_bytes` = peak - that baseline is what the case itself allocated. A fresh
`vaecompress` process starts at about 235 MiB (python + torch), so `extra_bytes` <= 250 MiB
means <= 500 MB for the same command run alone. Safety nets: the address space is capped
(RLIMIT_AS, baseline + `as_bytes`) and a wall-clock alarm ends a hung child.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import signal
import sys
import tempfile
import traceback


@dataclasses.dataclass
class Capped:
    rc: int
    stdout: str
    stderr: str
    cpu_seconds: float
    wall_seconds: float
    peak_bytes: int
    start_bytes: int

    @property
    def extra_bytes(self) -> int:
        return max(0, self.peak_bytes - self.start_bytes)

    def error_lines(self) -> list[str]:
        return [l for l in self.stderr.splitlines() if l.strip()]


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def run_capped(args, env: dict | None = None, wall_seconds: int = 60, as_bytes: int = 3 << 30,
               before=None) -> Capped:
    """`vaecompress *args` in a forked child. `before()` runs in the child first (e.g. a thread
    that sends a signal later)."""
    import time
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    rd, wr = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        code = 97
        try:
            os.close(rd)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            if env:
                for k, v in env.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            os.write(wr, str(status_kb("VmRSS") * 1024).encode())
            os.close(wr)
            vm = status_kb("VmSize") * 1024
            resource.setrlimit(resource.RLIMIT_AS, (vm + as_bytes, resource.RLIM_INFINITY))
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(wall_seconds)
            if before is not None:
                before()
            from vaecompress_cli.main import main
            main([str(a) for a in args], prog_name="vaecompress", standalone_mode=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - report anything, the parent asserts on it
            traceback.print_exc()
            code = 98
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(wr)
    start = int(os.read(rd, 64) or b"0")
    os.close(rd)
    _, status, ru = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    return Capped(rc, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                  ru.ru_utime + ru.ru_stime, wall, ru.ru_maxrss * 1024, start)
