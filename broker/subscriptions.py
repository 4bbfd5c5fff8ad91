"""Push subscriptions: the broker delivers a queue's messages to a connection unasked.

``subscribe`` (queue, credit N, visibility, auto_ack) starts a task on the connection
that leases ready messages through the live path (``Live.push``) and sends them in PUSH
frames named ``deliver``. Rules:

1. **Credit.** At most ``credit`` messages pushed to a subscription are unacked at once:
   a pushed message counts until it leaves its lease (ack, nack, reject, lease expiry,
   purge, dead-lettering, its queue deleted). ``extend`` keeps it counted. With
   ``auto_ack`` messages are deleted as they are pushed (at most once, one record per
   push), so credit only bounds one push.
2. **Flow control.** A push is written before the next one is taken, and only once the
   log covers its record, so a slow reader holds at most one push in the broker.
3. **Sharing.** A subscription with credit left and nothing to take waits in its queue's
   line (``waiting.Line``) beside held consumes, in arrival order: a change that makes k
   messages ready wakes at most k of them. A woken subscription takes at most its share:
   the ready messages divided among itself and those still waiting, at least one.
4. **Ends.** ``unsubscribe`` stops pushing; what was pushed stays leased (ack or nack it).
   When the connection closes, its subscriptions' unacked messages are released at once,
   as if nacked. A subscription whose queue is deleted ends with a ``subscription_end``
   PUSH (reason ``queue_deleted``); one ended by the broker's shutdown, with one of reason
   ``shutdown``, and its unacked messages are released.
5. **Queue groups.** A subscription of a queue group (``queue_groups.py``) pushes from
   its queues in turn: each push takes from the next queue after the previous push's
   that has ready messages, and names its queue. It waits in the lines of all of them
   (``waiting`` rule 7). One of a ``queues`` group ends (``queue_deleted``) when one of
   its queues is deleted; one of a ``prefix`` group goes on with the queues left.
"""
from __future__ import annotations

import logging
import math

import trio

from protocol import Encoder, ProtocolError, PushName

from .commands import Session, Subscribe, may_consume
from .live import Live
from .mutations import Mutation
from .queue_groups import QueueGroup, members, rotated
from .queues import LEASED
from .replies import Replies
from .waiting import Holds, Line, left
from .wal import GroupCommitter, LogFailedError

logger = logging.getLogger("lockgate.subscriptions")

#: How long a subscription waits before trying again after ``DISK_FULL``.
DISK_FULL_RETRY_S = 1.0


class Subscription:
    """One subscription of one connection."""

    __slots__ = ("sid", "queue", "group", "turn", "credit", "visibility_ms", "auto_ack",
                 "unacked_ids", "stopped", "release", "reason", "_event")

    def __init__(self, start: Subscribe) -> None:
        self.sid = start.subscription
        self.queue = start.queue
        #: The queue group it reads instead of ``queue`` (rule 5), and where its next push starts.
        self.group: QueueGroup | None = start.group
        self.turn = 0
        self.credit = start.credit
        self.visibility_ms = start.visibility_ms
        self.auto_ack = start.auto_ack
        #: Pushed and still leased, by queue (rule 1).
        self.unacked_ids: dict[str, set[int]] = {}
        self.stopped = False
        #: Release what is unacked when it ends (not after ``unsubscribe``: rule 4).
        self.release = True
        #: Why the broker ended it, told in a ``subscription_end`` push (None: not ended so).
        self.reason: str | None = None
        self._event = trio.Event()

    @property
    def unacked(self) -> int:
        return sum(len(ids) for ids in self.unacked_ids.values())

    def stop(self) -> None:
        """``unsubscribe``: no more pushes; what was pushed stays leased."""
        self.release = False
        self.end()

    def end(self) -> None:
        """No more pushes; what was pushed and is unacked is released."""
        self.stopped = True
        self.wake()

    def wake(self) -> None:
        """Look again: credit came back, it was stopped, or its queue has messages."""
        self._event.set()

    def fresh_event(self) -> trio.Event:
        if self._event.is_set():
            self._event = trio.Event()
        return self._event


class Subscriptions:
    """Every subscription of one broker; tells each when its pushed messages leave."""

    def __init__(self, live: Live, holds: Holds, committer: GroupCommitter) -> None:
        self._live = live
        self._holds = holds
        self._committer = committer
        #: Subscriptions by queue; the live path tells ``changed`` of these queues' mutations.
        self._by_queue: dict[str, list[Subscription]] = live.watched
        live.watcher = self.changed
        #: Group subscriptions that have pushed nothing yet (so watch no queue): for ``drain``.
        self._unwatched: set[Subscription] = set()

    def start(self, session: Session, start: Subscribe, replies: Replies, encoder: Encoder,
              nursery: trio.Nursery) -> None:
        """Run ``start`` on the connection of ``session``. Called while the round holding
        its reply runs: the first push waits until that round has been written."""
        sub = Subscription(start)
        session.subscriptions[sub.sid] = sub
        if sub.group is None:
            self._watch(sub, sub.queue)
        nursery.start_soon(self._run, session, sub, replies, encoder, replies.rounds + 1)

    def drain(self) -> None:
        """The broker is shutting down: every subscription stops with a
        ``subscription_end`` push (reason ``shutdown``); its unacked messages are released."""
        for subs in list(self._by_queue.values()):
            for sub in subs:
                sub.reason = "shutdown"
                sub.end()
        for sub in self._unwatched:
            sub.reason = "shutdown"
            sub.end()

    def changed(self, m: Mutation) -> None:
        """A mutation of a subscribed queue was applied: return credit (rule 1)."""
        name: str = getattr(m, "queue")
        subs = self._by_queue.get(name)
        if not subs:
            return
        queue = self._live.state.queues.get(name)
        ids: list[int] | None = getattr(m, "ids", None)
        for sub in subs:
            unacked = sub.unacked_ids.get(name)
            if not unacked:
                continue
            before = len(unacked)
            if queue is None:
                unacked.clear()
            else:
                msgs = queue.messages
                for mid in (ids if ids is not None else list(unacked)):
                    if mid in unacked and ((msg := msgs.get(mid)) is None or msg.state != LEASED):
                        unacked.discard(mid)
            if len(unacked) < before:
                sub.wake()

    async def _run(self, session: Session, sub: Subscription, replies: Replies,
                   encoder: Encoder, reply_round: int) -> None:
        live = self._live
        woken: list[Line] = []  # the lines that woke it, until it has looked
        if sub.group is not None:
            self._unwatched.add(sub)
        try:
            await replies.sent_through(reply_round)  # the subscribe reply comes first
            while not sub.stopped:
                room = sub.credit - sub.unacked
                if room <= 0:
                    await sub.fresh_event().wait()
                    continue
                try:
                    taken = self._take(session, sub, room, woken)
                except ProtocolError as exc:  # DISK_FULL, or the log failed
                    logger.warning("subscription %d on %s: %s; trying again", sub.sid, self._what(sub), exc)
                    with trio.move_on_after(DISK_FULL_RETRY_S):
                        await sub.fresh_event().wait()
                    continue
                finally:
                    for line in woken:
                        line.looked()
                if taken is None:  # the queue is gone
                    await self._end(session, sub, replies, encoder, "queue_deleted")
                    return
                queue, rows, ids = taken
                if not rows:
                    # Woken and found nothing: back to the front of the line (rule 3).
                    woken = await self._wait_in_line(sub, first=bool(woken))
                    continue
                woken = []
                body: dict[str, object] = {"subscription": sub.sid, "messages": rows, "queue": queue}
                if not sub.auto_ack:
                    if queue not in sub.unacked_ids:
                        sub.unacked_ids[queue] = set()
                        if sub.group is not None:
                            self._watch(sub, queue)
                    sub.unacked_ids[queue].update(ids)
                frame = encoder.push(PushName.DELIVER, body)
                try:
                    await self._committer.wait_durable(live.durable_lsn())
                except LogFailedError:
                    live.heal_soon()
                    continue  # not sent: the lease runs out, or the connection's end releases it
                await replies.write(frame)
            if sub.reason is not None and sub.release:  # ended by the broker, not unsubscribed
                await self._end(session, sub, replies, encoder, sub.reason)
        finally:
            self._forget(sub)
            if sub.release:
                for queue, unacked in sub.unacked_ids.items():
                    if unacked:
                        live.release(queue, sorted(unacked), delivered=True)  # rule 4
            sub.unacked_ids.clear()

    def _take(self, session: Session, sub: Subscription, room: int,
              woken: list[Line]) -> tuple[str, list[list[object]], list[int]] | None:
        """Lease (or with auto_ack, take) what its next push carries: (its queue, the
        deliveries, their ids), with no deliveries if nothing is ready; None if its queue
        is gone (rule 4). Of a group: from the next queue in turn with ready messages."""
        live = self._live
        if sub.group is None:
            taken = live.push(sub.queue, min(room, self._share(sub.queue, bool(woken))),
                              sub.visibility_ms, sub.auto_ack, session.client_max_frame)
            return None if taken is None else (sub.queue, *taken)
        try:
            found = members(sub.group, live.state.queues, may_consume(session))
        except ProtocolError:  # a queue of its group is gone (rule 5)
            return None
        sub.turn += 1
        for queue in rotated(found, sub.turn - 1):
            if queue.ready:
                woke_here = any(line.name == queue.name and not line.prefix for line in woken)
                taken = live.push(queue.name, min(room, self._share(queue.name, woke_here)),
                                  sub.visibility_ms, sub.auto_ack, session.client_max_frame)
                if taken is not None and taken[0]:
                    return (queue.name, *taken)
        return "", [], []

    @staticmethod
    def _what(sub: Subscription) -> str:
        return sub.queue if sub.group is None else sub.group.describe()

    def _share(self, queue: str, woken: bool) -> int:
        """Rule 3: the ready messages divided among this one and the others that wait or
        were woken and have yet to look."""
        held = self._live.state.queues.get(queue)
        line = self._holds.line(queue)
        if held is None:
            return 1
        others = 0 if line is None else line.waiting + line.woken - (1 if woken else 0)
        return max(1, math.ceil(held.ready / (others + 1)))

    async def _wait_in_line(self, sub: Subscription, first: bool) -> list[Line]:
        """Wait for messages (or credit, or the end); the lines that woke it."""
        event = sub.fresh_event()
        places = self._holds.places(sub.queue, sub.group, first, event)
        woke: list[Line] = []
        try:
            await event.wait()
        finally:
            woke = left(places)  # none: woken by credit or its end (or cancelled)
        return woke

    async def _end(self, session: Session, sub: Subscription, replies: Replies, encoder: Encoder,
                   reason: str) -> None:
        session.subscriptions.pop(sub.sid, None)
        await replies.write(encoder.push(PushName.SUBSCRIPTION_END,
                                         {"subscription": sub.sid, "reason": reason}))

    def _watch(self, sub: Subscription, queue: str) -> None:
        """Tell ``sub`` of ``queue``'s changes (rule 1)."""
        self._by_queue.setdefault(queue, []).append(sub)
        self._unwatched.discard(sub)

    def _forget(self, sub: Subscription) -> None:
        self._unwatched.discard(sub)
        for queue in {sub.queue, *sub.unacked_ids}:
            subs = self._by_queue.get(queue)
            if subs is not None and sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._by_queue[queue]
