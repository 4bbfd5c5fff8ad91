"""In-memory queues: messages, per-kind ready sets, queues with leases and timers."""
from .message import DELAYED, DELETED, LEASED, READY, WAITING, Message
from .dedup import DedupIds
from .queue import DELIVERY_OVERHEAD, PEEK_EXTRA, DeadLetter, Queue, QueueSettings, take_fitting
from .ready import READY_SETS, FifoReady, LifoReady, PriorityReady, RoundRobinReady

__all__ = [
    "DELAYED", "DELETED", "DELIVERY_OVERHEAD", "DeadLetter", "DedupIds", "LEASED", "READY", "READY_SETS",
    "WAITING", "FifoReady", "LifoReady", "Message", "PEEK_EXTRA", "PriorityReady", "Queue", "QueueSettings",
    "RoundRobinReady", "take_fitting",
]
