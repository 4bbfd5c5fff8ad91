"""What authentication adds to connecting: connect times with and without auth.

    python -m tools.authbench [--connects 400] [--rounds 3] [--iterations 4096]

Starts two brokers on 127.0.0.1 (fsync never, temporary data directories): one without
authentication, one with ``auth = "required"`` and a users file holding one SCRAM user
(``--iterations``) and one token user. Each connect is ``SyncClient(...)`` (TCP connect,
``hello`` and, with auth, the SCRAM or token exchange) and ``close()``, timed end to end
by the client. The kinds take turns connect by connect, in an order shuffled each time,
so they share the machine's state: none, SCRAM (the client's PBKDF2 cached, as on every
connect after the first in a process), SCRAM cold (the cache cleared first: what a
process's first connect costs), token. The broker without auth gets three connects for
each one of every kind, so that both brokers are as busy (a broker woken less often
answers slower). Prints, per kind, the least, p25, median and p90 connect time and the
median minus that of no auth, in ms.
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from client import SyncClient
from client.auth import derive
from protocol.scram import ScramSecret
from protocol.users import Patterns, User, Users, dump, new_token, token_hash
from tools.procs import BrokerProcess

PASSWORD = "authbench password"


def _users(path: Path, iterations: int, token: str) -> None:
    every = Patterns.of(["*"])
    path.write_text(dump(Users({
        "bench": User(name="bench", scram=ScramSecret.from_password(PASSWORD, iterations=iterations),
                      publish=every, consume=every, admin=every),
        "svc": User(name="svc", tokens=(token_hash(token),), publish=every),
    })))
    path.chmod(0o600)


def _timed(connect: Callable[[], SyncClient]) -> float:
    t0 = time.perf_counter()
    connect().close()
    return (time.perf_counter() - t0) * 1000


def run(connects: int, rounds: int, iterations: int) -> dict[str, list[float]]:
    """Connect times in ms by kind, ``connects`` of each kind per round."""
    token = new_token()
    times: dict[str, list[float]] = {"none": [], "scram": [], "scram cold": [], "token": []}
    with tempfile.TemporaryDirectory(prefix="lg-authbench-") as tmp:
        work = Path(tmp)
        _users(work / "users.toml", iterations, token)
        with BrokerProcess(work / "plain", fsync="never") as plain, \
                BrokerProcess(work / "auth", fsync="never",
                              args=("--auth", "required", "--users-file", str(work / "users.toml"))) as auth:

            def cold() -> SyncClient:
                derive.cache_clear()
                return SyncClient(auth.addr, user="bench", password=PASSWORD)

            kinds: dict[str, Callable[[], SyncClient]] = {
                "none": lambda: SyncClient(plain.addr),
                "scram": lambda: SyncClient(auth.addr, user="bench", password=PASSWORD),
                "scram cold": cold,
                "token": lambda: SyncClient(auth.addr, token=token),
            }
            for connect in kinds.values():  # warm up both brokers and the client
                for _ in range(20):
                    _timed(connect)
            # As many connects to each broker; no kind always follows another.
            order = ["none"] * (len(kinds) - 1) + [k for k in kinds if k != "none"]
            shuffle = random.Random(7).shuffle
            for _ in range(rounds):
                for _ in range(connects):
                    shuffle(order)
                    for kind in order:
                        times[kind].append(_timed(kinds[kind]))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=400, help="connects of each kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=4096, help="PBKDF2 iterations of the SCRAM user")
    opts = parser.parse_args()
    times = run(opts.connects, opts.rounds, opts.iterations)
    base = statistics.median(times["none"])
    print(f"{opts.connects * opts.rounds} connects of each kind ({len(times['none'])} without auth), "
          f"iterations {opts.iterations}")
    print(f"{'kind':<12}{'min ms':>8}{'p25 ms':>8}{'median ms':>10}{'p90 ms':>9}{'added ms':>10}")
    for kind, ms in times.items():
        median = statistics.median(ms)
        deciles = statistics.quantiles(ms, n=20)
        print(f"{kind:<12}{min(ms):>8.3f}{deciles[4]:>8.3f}{median:>10.3f}{deciles[-2]:>9.3f}{median - base:>10.3f}")


if __name__ == "__main__":
    main()
