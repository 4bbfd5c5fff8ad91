"""The work of the example: thumbnails of uploaded images, with realistic trouble.

A :class:`Job` asks for the thumbnail of one image. :class:`Renderer` does the work (it
only pretends, with ``trio.sleep``) and fails the way real workers fail:

- a **small** image takes a few milliseconds, a **large** one ``large_ms``: longer than
  a lease, so the consumer has to extend its lease while it works;
- one attempt in ``flaky_rate`` meets a storage timeout (:class:`StorageTimeout`): a
  transient failure that a retry fixes;
- a format the renderer has no decoder for fails every time (:class:`UnsupportedFormat`)
  until a renderer that knows it is deployed: those jobs end in the dead-letter queue
  and are redriven after the upgrade.

Whether an attempt is flaky is drawn from a generator seeded with (seed, job, attempt),
so runs are repeatable whatever the order the consumers get the jobs in.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from typing import Any

import trio

#: Formats the first version of the renderer decodes; ``webp`` comes with the upgrade.
V1_FORMATS = frozenset({"png", "jpeg"})
ALL_FORMATS = V1_FORMATS | {"webp"}


@dataclass(frozen=True, slots=True)
class Job:
    """Make a thumbnail of ``image``. ``number`` is the producer's own job number."""

    number: int
    image: str
    format: str
    large: bool

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Job:
        fields: dict[str, Any] = json.loads(data)
        return cls(**fields)


def make_jobs(count: int, seed: int, first: int = 1) -> list[Job]:
    """``count`` jobs numbered from ``first``: mostly png and jpeg, one in ten webp, one in
    twenty large."""
    rng = random.Random(seed)
    jobs = []
    for number in range(first, first + count):
        fmt = rng.choices(["png", "jpeg", "webp"], weights=[50, 40, 10])[0]
        jobs.append(Job(number, f"uploads/img-{number}.{fmt}", fmt, large=rng.random() < 0.05))
    return jobs


class RenderError(Exception):
    """A thumbnail could not be made."""


class StorageTimeout(RenderError):
    """The object store did not answer in time (transient)."""


class UnsupportedFormat(RenderError):
    """No decoder for the image's format (fails until the renderer is upgraded)."""


@dataclass(frozen=True, slots=True)
class Renderer:
    """Makes thumbnails; ``formats`` is what this version can decode."""

    formats: frozenset[str]
    seed: int
    large_ms: int
    flaky_rate: float = 0.15

    async def render(self, job: Job, attempt: int) -> str:
        """Make the thumbnail of ``job`` on its ``attempt``-th delivery; returns its path."""
        rng = random.Random(f"{self.seed}/{job.number}/{attempt}")
        if job.format not in self.formats:
            raise UnsupportedFormat(f"no decoder for {job.format} ({job.image})")
        if rng.random() < self.flaky_rate:
            await trio.sleep(0.005)
            raise StorageTimeout(f"object store timed out reading {job.image}")
        await trio.sleep(self.large_ms / 1000 if job.large else rng.uniform(0.005, 0.03))
        return f"thumbs/img-{job.number}.jpeg"
