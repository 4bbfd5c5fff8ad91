"""A broker of the demo's own, to crash on purpose.

``demo`` runs ``python -m broker`` (the same as ``brokerd``) as a child process on
127.0.0.1 with a data directory of its own. :meth:`LocalBroker.crash` sends it SIGKILL
(by its PID: only the process this object started), the way a power supply or the OOM
killer ends a process: no shutdown, no final fsync, no checkpoint. :meth:`start` again
runs it on the same port and data directory, so clients reconnect to the address they
know, and the broker recovers from its write-ahead log.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

#: The line the broker prints once it accepts connections.
READY = "lockgate listening on "
#: Longest wait for that line.
START_TIMEOUT_S = 30.0


class LocalBroker:
    """``python -m broker`` on 127.0.0.1, data in ``data_dir``, stderr in ``data_dir``'s
    sibling ``broker.log``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0  # a free one, the first time
        self.proc: subprocess.Popen[str] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        """Start the broker (blocking until it listens); returns its address."""
        log = open(self.data_dir.parent / "broker.log", "a")
        with log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "broker", "--host", "127.0.0.1", "--port", str(self.port),
                 "--data", str(self.data_dir), "--log-level", "warning"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
            )
        assert self.proc.stdout is not None
        line = ""
        if select.select([self.proc.stdout], [], [], START_TIMEOUT_S)[0]:
            line = self.proc.stdout.readline()  # the ready line comes first (or EOF: it exited)
        if not line.startswith(READY):
            self.crash()
            raise RuntimeError(f"the broker did not start: {line!r} (see {self.data_dir.parent / 'broker.log'})")
        self.port = int(line[len(READY):].strip().rpartition(":")[2])
        return self.addr

    def crash(self) -> None:
        """SIGKILL the broker and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def stop(self) -> None:
        """SIGTERM the broker (a graceful shutdown) and wait for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.crash()
            return
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
