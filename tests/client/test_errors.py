"""The error factory: one distinct exception class per wire code."""
from __future__ import annotations

import pytest

from client import errors
from client.errors import (
    ConnectionClosed,
    InvalidArgument,
    LockgateError,
    MessageTooLarge,
    QueueNotFound,
    WrongNode,
    error_from_frame,
)
from protocol import Encoder, Error, ErrorCode, decode_frame


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def test_every_code_maps_to_its_own_subclass() -> None:
    classes = {code: type(LockgateError.from_code(code, "m")) for code in ErrorCode}
    assert len(set(classes.values())) == len(ErrorCode)
    for code, cls in classes.items():
        assert cls is not LockgateError and issubclass(cls, LockgateError)
        assert cls.code is code
        assert cls.__name__ == _camel(code.name)
        assert getattr(errors, cls.__name__) is cls


def test_from_code_accepts_plain_ints() -> None:
    exc = LockgateError.from_code(8, "no queue 'x'", {"field": "queue"})
    assert type(exc) is QueueNotFound
    assert exc.code == ErrorCode.QUEUE_NOT_FOUND
    assert exc.message == "no queue 'x'"
    assert exc.details == {"field": "queue"}


def test_unknown_code_is_a_plain_lockgate_error() -> None:
    exc = LockgateError.from_code(999, "from the future", {"x": 1})
    assert type(exc) is LockgateError
    assert exc.code == 999
    assert exc.code_name == "ERROR_999"
    assert str(exc) == "ERROR_999: from the future"


def test_str_is_code_name_and_message() -> None:
    exc = LockgateError.from_code(ErrorCode.QUEUE_FULL, "queue q is full")
    assert str(exc) == "QUEUE_FULL: queue q is full"
    assert exc.code_name == "QUEUE_FULL"
    assert exc.details == {}


def test_error_from_frame_keeps_everything() -> None:
    wire = Encoder().error(7, ErrorCode.INVALID_ARGUMENT, "shards must be 1..256", {"field": "shards"})
    frame = decode_frame(wire)
    assert isinstance(frame, Error)
    exc = error_from_frame(frame)
    assert isinstance(exc, InvalidArgument)
    assert exc.field == "shards"
    assert exc.message == "shards must be 1..256"


def test_detail_accessors() -> None:
    assert WrongNode("elsewhere", {"addr": "10.0.0.2:7878"}).addr == "10.0.0.2:7878"
    assert MessageTooLarge("too big", {"index": 3}).index == 3
    assert InvalidArgument("bad").field is None


def test_connection_closed_is_not_a_wire_error() -> None:
    exc = ConnectionClosed("connection lost: reset")
    assert isinstance(exc, LockgateError)
    assert exc.code is None
    assert exc.code_name == "CONNECTION_CLOSED"
    assert str(exc) == "connection lost: reset"
    assert ConnectionClosed not in {type(LockgateError.from_code(c, "")) for c in ErrorCode}


def test_a_second_class_for_a_code_is_refused() -> None:
    with pytest.raises(TypeError):
        type("Again", (LockgateError,), {"code": ErrorCode.QUEUE_FULL})


def test_errors_can_be_raised_and_caught_by_base() -> None:
    with pytest.raises(LockgateError) as info:
        raise LockgateError.from_code(ErrorCode.SHUTTING_DOWN, "bye")
    assert info.value.code is ErrorCode.SHUTTING_DOWN
