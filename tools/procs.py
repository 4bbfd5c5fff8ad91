"""Run a real broker as a child process, for tools and tests.

    with BrokerProcess(Path("/tmp/lg/data"), fsync="always") as broker:
        client = SyncClient(broker.addr)
        ...
        broker.kill()      # SIGKILL by PID: a crash
        broker.start()     # the same data directory again

The child is ``python -m broker --host 127.0.0.1 --port 0 --data DIR --fsync POLICY``;
``start`` waits (bounded) for its ``lockgate listening on HOST:PORT`` line. Only the
process this object started is ever signalled, and only by its PID. The broker's
stderr goes to a log file (appended across restarts); ``log_tail`` reads its end.

This module must not import ``broker`` or ``tests``: it only runs the broker.
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

#: The repository root: the child runs here, with it on ``PYTHONPATH``.
ROOT = Path(__file__).resolve().parent.parent
#: The line the broker prints on stdout once it accepts connections.
READY_PREFIX = b"lockgate listening on "
#: Seconds ``kill`` waits for the killed child to be reaped.
REAP_TIMEOUT = 30.0


class BrokerProcess:
    """A ``python -m broker`` child on 127.0.0.1 and a free port, signalled by its PID."""

    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: str = "always",
        args: tuple[str, ...] = (),
        log_path: Path | None = None,
        log_level: str = "warning",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.fsync = fsync
        self.args = tuple(args)
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        #: Where the broker's stderr goes (appended to on every start).
        self.log_path = Path(log_path) if log_path is not None else (
            self.data_dir.parent / f"{self.data_dir.name}-broker.log")

    @property
    def stderr_path(self) -> Path:
        """The log file (old name, kept for callers)."""
        return self.log_path

    @property
    def addr(self) -> str:
        """``host:port`` of the running broker (port 0 before ``start``)."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "broker", "--host", "127.0.0.1", "--port", "0",
                "--data", str(self.data_dir), "--fsync", self.fsync,
                "--log-level", self.log_level, *self.args]

    def start(self, timeout: float = 30.0) -> BrokerProcess:
        """Start the child and wait at most ``timeout`` s for its ready line.

        Raises ``RuntimeError`` (with the log's tail) if it exits or stays silent; the
        child is killed in that case. Starting while a child runs is an error.
        """
        if self.running:
            raise RuntimeError(f"broker already running (pid {self.pid})")
        self._close_pipe()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=log, cwd=ROOT, env=env)
        try:
            line = self._read_ready_line(time.monotonic() + timeout)
        except BaseException:
            self.kill()
            raise
        addr = line[len(READY_PREFIX):].decode().strip()
        host, _, port = addr.rpartition(":")
        self.host, self.port = host, int(port)
        return self

    def _read_ready_line(self, deadline: float) -> bytes:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"broker did not start in time: {self.log_tail()}")
                if sel.select(min(left, 0.5)):
                    chunk = os.read(fd, 4096)
                    if not chunk:  # stdout closed: the child is exiting
                        proc.wait(timeout=REAP_TIMEOUT)
                        raise RuntimeError(
                            f"broker exited with status {proc.returncode} before it was ready: "
                            f"{self.log_tail()}")
                    line += chunk
                elif proc.poll() is not None:
                    raise RuntimeError(
                        f"broker exited with status {proc.returncode} before it was ready: {self.log_tail()}")
        first = line.split(b"\n", 1)[0]
        if not first.startswith(READY_PREFIX):
            raise RuntimeError(f"unexpected first line from the broker: {first!r}")
        return first

    def log_tail(self, n: int = 4000) -> str:
        """The last ``n`` characters of the log file."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the child (a crash) and reap it. Does nothing if it is not running."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=REAP_TIMEOUT)
        self._close_pipe()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the child and wait at most ``timeout`` s for it to exit; returns its
        exit status. If it does not exit in time it is killed (status -9)."""
        proc = self.proc
        if proc is None:
            raise RuntimeError("broker was never started")
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipe()
        assert proc.returncode is not None
        return proc.returncode

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None and self.proc.poll() is not None:
            self.proc.stdout.close()

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


__all__ = ["BrokerProcess", "ROOT"]
