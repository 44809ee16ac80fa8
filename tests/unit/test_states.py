"""The state table and the window/cursor rules of shared/protocol/states.py, as tables."""

from __future__ import annotations

import pytest

from shared.protocol.messages import DOWNSTREAM_RELIABLE, UPSTREAM_RELIABLE, Op
from shared.protocol.states import (
    INITIAL,
    LOCAL_ACK_BEYOND,
    LOCAL_ACK_NOT_OPEN,
    LOCAL_ACK_OK,
    LOCAL_ACK_STALE,
    MOVE_IN_FLIGHT,
    MOVE_OK,
    PEER_ACK_BEYOND,
    PEER_ACK_NO_CURSOR,
    PEER_ACK_OK,
    PEER_ACK_STALE,
    RECEIVABLE,
    RECEIVE_NO_CURSOR,
    RECEIVE_NO_RES,
    RECEIVE_OK,
    RECEIVE_RESEND,
    ROLE_STATES,
    RULES,
    SEND_NOT_AFTER,
    SEND_NOT_OPEN,
    SEND_NOT_RELIABLE,
    SEND_OK,
    SEND_WINDOW_FULL,
    STREAMS,
    TRANSITIONS,
    TRIGGER_TEXT,
    Outcome,
    Role,
    Rule,
    State,
    Trigger,
    check_local_ack,
    check_move_send_cursor,
    check_peer_ack,
    check_receive,
    check_send,
    send_capacity,
)

C, E = Role.CLOUD, Role.EDGE
OPEN, HELLO_SENT, HELLO_RECEIVED, CLOSED = (
    State.OPEN,
    State.HELLO_SENT,
    State.HELLO_RECEIVED,
    State.CLOSED,
)

# (role, state, op, cursor, last_sent, in_flight, window) -> verdict
SEND_CASES: list[tuple[tuple[Role, State, Op, int, int, int, int], Rule]] = [
    ((C, OPEN, Op.APPLY, 1, 0, 0, 4), SEND_OK),
    ((C, OPEN, Op.DELETE, 9, 5, 3, 4), SEND_OK),  # gaps are fine; one slot left
    ((C, OPEN, Op.CHUNK, 6, 5, 0, 1), SEND_OK),
    ((E, OPEN, Op.REPORT, 1, 0, 0, 4), SEND_OK),
    ((E, OPEN, Op.RESULT, 11, 10, 255, 256), SEND_OK),
    ((C, OPEN, Op.REPORT, 1, 0, 0, 4), SEND_NOT_RELIABLE),  # the other direction's op
    ((E, OPEN, Op.APPLY, 1, 0, 0, 4), SEND_NOT_RELIABLE),
    ((C, OPEN, Op.ACK, 1, 0, 0, 4), SEND_NOT_RELIABLE),  # acks are not reliable
    ((E, OPEN, Op.PING, 1, 0, 0, 4), SEND_NOT_RELIABLE),
    ((C, CLOSED, Op.REPORT, 1, 0, 0, 4), SEND_NOT_RELIABLE),  # the op is checked first
    ((C, HELLO_RECEIVED, Op.APPLY, 1, 0, 0, 4), SEND_NOT_OPEN),
    ((E, HELLO_SENT, Op.REPORT, 1, 0, 0, 4), SEND_NOT_OPEN),
    ((E, CLOSED, Op.REPORT, 1, 0, 0, 4), SEND_NOT_OPEN),
    ((C, CLOSED, Op.APPLY, 0, 5, 4, 4), SEND_NOT_OPEN),  # state before window and cursor
    ((C, OPEN, Op.APPLY, 5, 4, 4, 4), SEND_WINDOW_FULL),
    ((E, OPEN, Op.REPORT, 2, 1, 1, 1), SEND_WINDOW_FULL),
    ((C, OPEN, Op.APPLY, 3, 9, 5, 4), SEND_WINDOW_FULL),  # window before cursor
    ((C, OPEN, Op.APPLY, 5, 5, 0, 4), SEND_NOT_AFTER),  # equal: the peer already has it
    ((C, OPEN, Op.APPLY, 0, 5, 0, 4), SEND_NOT_AFTER),
    ((E, OPEN, Op.RESULT, 9, 10, 3, 4), SEND_NOT_AFTER),
]

# (cursor, has_res, last_received) -> verdict
RECEIVE_CASES: list[tuple[tuple[int | None, bool, int], Rule]] = [
    ((1, True, 0), RECEIVE_OK),
    ((11, True, 10), RECEIVE_OK),
    ((1 << 62, True, 3), RECEIVE_OK),  # gaps are normal
    ((None, True, 0), RECEIVE_NO_CURSOR),
    ((None, False, 0), RECEIVE_NO_CURSOR),  # the cursor is checked first
    ((1, False, 0), RECEIVE_NO_RES),
    ((0, False, 5), RECEIVE_NO_RES),  # res before order
    ((5, True, 5), RECEIVE_RESEND),  # a resend
    ((4, True, 5), RECEIVE_RESEND),  # a replay
    ((0, True, 0), RECEIVE_RESEND),  # at the announced cursor
]

# (cursor, last_sent, last_acked_by_peer) -> verdict
PEER_ACK_CASES: list[tuple[tuple[int | None, int, int], Rule]] = [
    ((3, 5, 0), PEER_ACK_OK),
    ((5, 5, 3), PEER_ACK_OK),  # everything sent
    ((None, 5, 0), PEER_ACK_NO_CURSOR),
    ((6, 5, 0), PEER_ACK_BEYOND),
    ((1, 0, 0), PEER_ACK_BEYOND),  # nothing sent at all
    ((3, 5, 3), PEER_ACK_STALE),  # duplicate
    ((2, 5, 3), PEER_ACK_STALE),  # stale
    ((0, 5, 0), PEER_ACK_STALE),  # the announced cursor itself
    ((9, 5, 7), PEER_ACK_BEYOND),  # beyond wins over anything else
]

# (state, cursor, last_received, last_acked_by_us) -> verdict
LOCAL_ACK_CASES: list[tuple[tuple[State, int, int, int], Rule]] = [
    ((OPEN, 6, 6, 4), LOCAL_ACK_OK),
    ((OPEN, 5, 6, 4), LOCAL_ACK_OK),  # part of what arrived: acks may lag
    ((OPEN, 7, 6, 4), LOCAL_ACK_BEYOND),
    ((OPEN, 4, 6, 4), LOCAL_ACK_STALE),
    ((OPEN, 2, 6, 4), LOCAL_ACK_STALE),
    ((CLOSED, 99, 6, 4), LOCAL_ACK_NOT_OPEN),  # closed: nothing, not even an error
    ((HELLO_SENT, 1, 0, 0), LOCAL_ACK_NOT_OPEN),
]


@pytest.mark.parametrize(("args", "expected"), SEND_CASES)
def test_send_rules(args: tuple[Role, State, Op, int, int, int, int], expected: Rule) -> None:
    assert check_send(*args) is expected


@pytest.mark.parametrize(("args", "expected"), RECEIVE_CASES)
def test_receive_rules(args: tuple[int | None, bool, int], expected: Rule) -> None:
    assert check_receive(*args) is expected


@pytest.mark.parametrize(("args", "expected"), PEER_ACK_CASES)
def test_peer_ack_rules(args: tuple[int | None, int, int], expected: Rule) -> None:
    assert check_peer_ack(*args) is expected


@pytest.mark.parametrize(("args", "expected"), LOCAL_ACK_CASES)
def test_local_ack_rules(args: tuple[State, int, int, int], expected: Rule) -> None:
    assert check_local_ack(*args) is expected


@pytest.mark.parametrize(("in_flight", "expected"), [(0, MOVE_OK), (1, MOVE_IN_FLIGHT)])
def test_moving_the_send_cursor(in_flight: int, expected: Rule) -> None:
    assert check_move_send_cursor(in_flight) is expected


@pytest.mark.parametrize(
    ("state", "window", "in_flight", "capacity"),
    [
        (OPEN, 4, 0, 4),
        (OPEN, 4, 3, 1),
        (OPEN, 4, 4, 0),
        (HELLO_RECEIVED, 4, 0, 0),
        (HELLO_SENT, 256, 0, 0),
        (CLOSED, 4, 1, 0),
    ],
)
def test_send_capacity(state: State, window: int, in_flight: int, capacity: int) -> None:
    assert send_capacity(state, window, in_flight) == capacity


def test_every_rule_is_reached_by_a_case_and_listed_once() -> None:
    reached = {
        rule
        for cases in (SEND_CASES, RECEIVE_CASES, PEER_ACK_CASES, LOCAL_ACK_CASES)
        for _, rule in cases
    } | {MOVE_OK, MOVE_IN_FLIGHT}
    assert reached == set(RULES)
    assert len(RULES) == len(set(RULES))


def test_each_action_ends_with_its_proceed_row() -> None:
    """RULES is read top-down per action (docs §5.1): the last row of each is 'otherwise'."""
    actions: dict[str, list[Rule]] = {}
    for rule in RULES:
        actions.setdefault(rule.action, []).append(rule)
    assert list(actions) == [
        "send",
        "receive reliable",
        "receive ack",
        "send ack",
        "move the send cursor",
    ]
    for rows in actions.values():
        assert [r.outcome for r in rows].count(Outcome.PROCEED) == 1
        assert rows[-1].outcome is Outcome.PROCEED and rows[-1].when.startswith("otherwise")
    # The session raises on every verdict of these actions but PROCEED, so none may be IGNORE;
    # receiving has exactly one, the resend, which the session skips (and acks again).
    for action in ("send", "move the send cursor"):
        assert Outcome.IGNORE not in {r.outcome for r in actions[action]}
    ignored = [r for r in actions["receive reliable"] if r.outcome is Outcome.IGNORE]
    assert ignored == [RECEIVE_RESEND]


VALUES = {"role": "cloud", "op": "apply", "state": "open", "field": "rv", "cursor": 7, "last": 9}


@pytest.mark.parametrize("rule", [r for r in RULES if r.outcome in (Outcome.REFUSE, Outcome.CLOSE)])
def test_every_violation_explains_itself(rule: Rule) -> None:
    text = rule.explain(**VALUES)
    assert text and "{" not in text
    peer_or_local = {"receive reliable", "receive ack"}
    assert (rule.outcome is Outcome.CLOSE) == (rule.action in peer_or_local)


def test_rules_without_a_violation_have_no_message() -> None:
    assert all(not r.message for r in RULES if r.outcome in (Outcome.PROCEED, Outcome.IGNORE))


# ------------------------------------------------------------------ streams


def test_streams_pair_each_direction_with_its_cursor() -> None:
    assert STREAMS[C].sends == DOWNSTREAM_RELIABLE and STREAMS[C].send_cursor == "rv"
    assert STREAMS[E].sends == UPSTREAM_RELIABLE and STREAMS[E].send_cursor == "seq"
    for role, peer in ((C, E), (E, C)):
        assert STREAMS[role].send_cursor == STREAMS[peer].receive_cursor
        assert STREAMS[role].send_cursor != STREAMS[role].receive_cursor
    assert not STREAMS[C].sends & STREAMS[E].sends


def test_what_a_role_sends_reliably_is_what_its_peer_may_receive_when_open() -> None:
    for role, peer in ((C, E), (E, C)):
        reliable = {op.value for op in STREAMS[role].sends}
        assert reliable <= RECEIVABLE[(peer, OPEN)]
        assert not reliable & RECEIVABLE[(role, OPEN)]


# ------------------------------------------------------------------ the state table


def test_every_trigger_is_used_and_described() -> None:
    used = {trigger for (_, _, trigger) in TRANSITIONS}
    assert used == set(Trigger)
    assert set(TRIGGER_TEXT) == set(Trigger)


def _reachable(role: Role) -> set[State]:
    seen, todo = {INITIAL[role]}, [INITIAL[role]]
    while todo:
        state = todo.pop()
        for (r, s, _), nxt in TRANSITIONS.items():
            if r is role and s is state and nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize(
    ("role", "states"),
    [
        (C, {State.AWAIT_HELLO, HELLO_RECEIVED, OPEN, CLOSED}),
        (E, {HELLO_SENT, OPEN, CLOSED}),
    ],
)
def test_each_role_reaches_exactly_its_states(role: Role, states: set[State]) -> None:
    assert _reachable(role) == states == set(ROLE_STATES[role])
    assert {s for (r, s, _) in TRANSITIONS if r is role} == states - {CLOSED}
    # What may be received is declared for every live state a role can be in, and only those.
    assert {s for (r, s) in RECEIVABLE if r is role} == states - {CLOSED}


def test_closed_is_final_and_every_live_state_can_close() -> None:
    assert not [key for key in TRANSITIONS if key[1] is CLOSED]
    for role in Role:
        for state in _reachable(role) - {CLOSED}:
            assert TRANSITIONS[(role, state, Trigger.CLOSE)] is CLOSED
