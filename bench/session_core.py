"""The sans-I/O session's own cost per reliable message, against the codec alone.

One cloud and one edge `Session` back to back, no sockets, no clock reads:
the cloud sends windows of `apply` messages (~200-byte frames), the edge
receives them, drains its events and acks the window cumulatively, the
cloud takes the ack. Baselines in the same run: `codec.encode` + `codec.decode`
of the same envelopes (what any session must pay), and bare orjson
dumps + loads of the same documents. Prints one JSON document on stdout.

    python bench/session_core.py [--messages 200000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.protocol import codec
from shared.protocol.messages import Envelope, Op
from shared.protocol.session import Session, SessionConfig
from shared.protocol.states import Role

RES = "task/default/camera-faces"
BODY = {"generation": 3, "epoch": 7, "spec": {"kind": "command", "command": ["echo", "hi"]}}
WALL_MS = 1_732_400_000_000
MSG_ID = "01JDQ3ZQ7M7Y3W2Q8Z5V9K4B6C"


def _open_pair(window: int) -> tuple[Session, Session]:
    config = SessionConfig(window=window)
    edge = Session(Role.EDGE, config, 0.0, WALL_MS)
    cloud = Session(Role.CLOUD, config, 0.0, WALL_MS)
    edge.send_hello(0, {}, 0.0)
    for frame in edge.data_to_send():
        cloud.receive_frame(frame, 0.0)
    cloud.events_received()
    cloud.accept(0, {}, 0.0)
    for frame in cloud.data_to_send():
        edge.receive_frame(frame, 0.0)
    edge.events_received()
    return edge, cloud


def session_rate(messages: int, window: int) -> float:
    edge, cloud = _open_pair(window)
    rv = 0
    start = time.perf_counter()
    while rv < messages:
        for _ in range(window):
            rv += 1
            cloud.send(Op.APPLY, RES, rv, BODY, 1.0)
        for frame in cloud.data_to_send():
            edge.receive_frame(frame, 1.0)
        edge.events_received()
        edge.ack(rv, 1.0)
        for frame in edge.data_to_send():
            cloud.receive_frame(frame, 1.0)
        cloud.events_received()
    return rv / (time.perf_counter() - start)


def codec_rate(messages: int) -> float:
    start = time.perf_counter()
    for rv in range(1, messages + 1):
        env = Envelope(Op.APPLY, MSG_ID, WALL_MS, res=RES, rv=rv, body=BODY)
        codec.decode(codec.encode(env))
    return messages / (time.perf_counter() - start)


def orjson_rate(messages: int) -> float:
    start = time.perf_counter()
    for rv in range(1, messages + 1):
        doc = {"v": 1, "id": MSG_ID, "ts": WALL_MS, "op": "apply"}
        doc.update(res=RES, rv=rv, body=BODY)
        orjson.loads(orjson.dumps(doc))
    return messages / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window", type=int, default=256)
    args = parser.parse_args()
    frame = codec.encode(Envelope(Op.APPLY, MSG_ID, WALL_MS, res=RES, rv=1, body=BODY))
    runs: dict[str, list[float]] = {"session": [], "codec": [], "orjson": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits all alike
        runs["session"].append(session_rate(args.messages, args.window))
        runs["codec"].append(codec_rate(args.messages))
        runs["orjson"].append(orjson_rate(args.messages))
    medians = {name: round(statistics.median(values)) for name, values in runs.items()}
    print(
        orjson.dumps(
            {
                "frame_bytes": len(frame),
                "messages": args.messages,
                "repeats": args.repeats,
                "msg_per_s_median": medians,
                "session_vs_codec": round(medians["session"] / medians["codec"], 3),
                "runs": {name: [round(v) for v in values] for name, values in runs.items()},
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )


if __name__ == "__main__":
    main()
