"""Run the example programs as child processes and read the events they print.

The examples print one event per line, ``event key=value ...``, where a value is a bare
word or number, a JSON string (when it has spaces or quotes) or compact JSON.
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tools.procs import ROOT

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


@dataclass(frozen=True)
class Event:
    name: str
    fields: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


def _value(text: str) -> Any:
    if text.startswith(('"', "{", "[")) or re.fullmatch(r"-?\d+", text):
        return json.loads(text)
    return text


def parse(line: str) -> Event:
    name, _, rest = line.strip().partition(" ")
    return Event(name, {key: _value(value) for key, value in _FIELD.findall(rest)})


def parse_all(text: str) -> list[Event]:
    return [parse(line) for line in text.splitlines() if line.strip()]


def named(events: Iterable[Event], name: str) -> list[Event]:
    return [e for e in events if e.name == name]


def command(module: str, addr: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, "--addr", addr, *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}


def run(module: str, addr: str, *args: str, timeout: float = 60.0) -> list[Event]:
    """Run an example to its end; it must exit 0. Returns its events."""
    proc = subprocess.run(command(module, addr, *args), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return parse_all(proc.stdout)


class Running:
    """An example running as a child process, its events read as they come."""

    def __init__(self, module: str, addr: str, *args: str) -> None:
        self.proc = subprocess.Popen(command(module, addr, *args), cwd=ROOT, env=_env(), text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.events: list[Event] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, done: Callable[[list[Event]], bool], timeout: float = 20.0) -> None:
        """Read events until ``done(events so far)`` holds; fail if the program ends or
        ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while not done(self.events):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; events so far: {[e.name for e in self.events]}"
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"the program ended early: {self.stderr()}"
            self.events.append(parse(line))

    def interrupt(self, timeout: float = 20.0) -> int:
        """SIGINT the program (by its PID), read the rest of its events, return its exit status."""
        self.proc.send_signal(signal.SIGINT)
        status = self.proc.wait(timeout=timeout)
        while (line := self._lines.get(timeout=timeout)) is not None:
            self.events.append(parse(line))
        return status

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
