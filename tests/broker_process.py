"""Run a real broker as a child process (for sync-client, CLI and crash tests)."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class BrokerProcess:
    """A ``python -m broker`` child on 127.0.0.1 and a free port, stopped by its PID."""

    def __init__(self, data_dir: Path, *, fsync: str = "always", args: tuple[str, ...] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.fsync = fsync
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.stderr_path = self.data_dir.parent / f"{self.data_dir.name}-broker.log"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BrokerProcess":
        """Start and wait (bounded) for the ``lockgate listening on`` line."""
        cmd = [sys.executable, "-m", "broker", "--host", "127.0.0.1", "--port", "0",
               "--data", str(self.data_dir), "--fsync", self.fsync, "--log-level", "warning", *self.args]
        stderr = open(self.stderr_path, "ab")
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT, env=env)
        stderr.close()
        assert self.proc.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    self.kill()
                    raise RuntimeError(f"broker did not start: {self.log_tail()}")
                if sel.select(min(left, 0.5)):
                    chunk = os.read(self.proc.stdout.fileno(), 1)
                    if not chunk:
                        continue
                    line += chunk
        addr = line.decode().strip().rsplit(" ", 1)[-1]
        self.host, port = addr.rsplit(":", 1)
        self.port = int(port)
        return self

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the broker (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def __enter__(self) -> "BrokerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
