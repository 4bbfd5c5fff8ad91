"""The ``txn`` op (SPEC §5.28): several acks and publishes as one change, committed as
one WAL record (``mutations.Txn``), all or nothing. Added to ``broker.commands``'
registry like the topic ops."""
from __future__ import annotations

from typing import Any

from protocol import ErrorCode, Op, ProtocolError

from .admission import AdmissionClass
from protocol.users import Permission

from .commands import COMMANDS, Arg, Args, Command, Context, Outcome, Session, invalid, run
from .mutations import Mutation, Txn
from .topic_commands import TOPIC_COMMANDS
from .queues import LEASED, Queue

#: Most steps of one transaction.
MAX_TXN_STEPS = 64
#: The ops a step may be, and the argument naming what it changes.
TXN_OPS = {"ack": "queue", "publish": "queue", "topic_publish": "topic"}


def txn(session: Session, args: Args, ctx: Context) -> Outcome:
    steps = args["steps"]
    if type(steps) is not list or not 1 <= len(steps) <= MAX_TXN_STEPS:
        raise invalid("steps", f"steps must be an array of 1 to {MAX_TXN_STEPS} steps")
    seen: set[tuple[str, Any]] = set()
    mutations: list[Mutation] = []
    results: list[dict[str, Any]] = []
    for index, step in enumerate(steps):
        op = step.get("op") if type(step) is dict else None
        if op not in TXN_OPS:
            field = f"steps[{index}]"
            raise _of_step(index, invalid(f"{field}.op" if type(step) is dict else field,
                                          f"a step is a map with op {', '.join(TXN_OPS)} and that op's arguments"))
        command, target_arg, accepted = _STEPS[op]
        target = (op, step.get(target_arg))
        if target in seen:
            raise _of_step(index, invalid(f"steps[{index}]", f"a transaction may {op} to each {target_arg} "
                                                              "at most once"))
        seen.add(target)
        if not accepted.issuperset(step):
            unknown = next(k for k in step if k not in accepted)
            raise _of_step(index, invalid(f"steps[{index}].{unknown}", f"{op} takes no argument {unknown!r}"))
        try:
            outcome = run(command, session, step, ctx)  # its parser reads only its own arguments
            if op == "ack":
                _all_leased(ctx.state.queues[step["queue"]], step["ids"])
        except ProtocolError as exc:
            details = dict(exc.details or {})
            details["step"] = index
            if "field" in details:
                details["field"] = f"steps[{index}].{details['field']}"
            raise ProtocolError(exc.code, f"step {index} ({op}): {exc.message}", details=details) from None
        mutations += outcome.mutations
        results.append(outcome.result or {})
    result = {"results": results}
    if not mutations:
        return Outcome(result)
    return Outcome(result, (Txn.of(mutations),))


def _of_step(index: int, exc: ProtocolError) -> ProtocolError:
    """A transaction's refusal of its step ``index`` (SPEC §5.28: ``details.step``)."""
    exc.details["step"] = index
    exc.message = f"step {index}: {exc.message}"
    return exc


def _all_leased(queue: Queue, ids: list[int]) -> None:
    """An ack step commits only while each of its messages is leased (SPEC §5.28)."""
    msgs = queue.messages
    lost = [i for i in dict.fromkeys(ids) if (m := msgs.get(i)) is None or m.state != LEASED]
    if lost:
        raise ProtocolError(ErrorCode.TXN_CONFLICT,
                            f"{len(lost)} of the messages to ack in {queue.name!r} are not leased any more",
                            details={"queue": queue.name, "ids": lost})


def step_permissions(args: dict[str, Any]) -> list[tuple[Permission, Any]]:
    """A transaction needs what each of its steps needs (SPEC §4.3); a malformed step
    needs nothing here (the handler refuses it)."""
    steps = args.get("steps")
    needs: list[tuple[Permission, Any]] = []
    for step in steps if type(steps) is list else ():
        command = COMMANDS[step["op"]] if type(step) is dict and step.get("op") in TXN_OPS else None
        if command is None:
            continue
        if callable(command.permission):
            needs.extend(command.permission(step))
        else:
            needs.extend((n.permission, step.get(n.arg)) for n in command.permission)
    return needs


def _step_table() -> dict[str, tuple[Command, str, frozenset[str]]]:
    """Each step op's command, the argument naming what it changes, and the keys a step
    of it may have (its arguments and ``op``)."""
    commands = {**COMMANDS, **{str(c.op): c for c in TOPIC_COMMANDS}}
    return {op: (commands[op], target, commands[op].fields | {"op"}) for op, target in TXN_OPS.items()}


_STEPS = _step_table()

TXN_COMMANDS: tuple[Command, ...] = (
    Command(Op.TXN, txn, (Arg("steps", "any", doc="1..64 steps: ack, publish or topic_publish."),),
            AdmissionClass.PUBLISH, changes_state=True, permission=step_permissions),
)
