"""``plain_messages`` builds exactly what ``Message.__init__`` builds."""
from __future__ import annotations

from broker.queues.message import Message, plain_messages


def test_plain_messages_set_every_slot_as_init_does() -> None:
    bodies = [b"a", b"", b"c" * 300]
    built = plain_messages(41, bodies, 1_700_000_000_123)
    assert len(built) == len(bodies)
    for i, (m, body) in enumerate(zip(built, bodies)):
        ref = Message(41 + i, body, None, 0, 0, 1_700_000_000_123)
        assert type(m) is Message
        assert {s: getattr(m, s) for s in Message.__slots__} == {
            s: getattr(ref, s) for s in Message.__slots__}
    assert plain_messages(7, [], 5) == []
