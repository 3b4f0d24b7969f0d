"""ServerApp of the probe: polls for nodes, sends query.embed, writes JSON."""

import json
import os
import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()

# Fallbacks used when context.run_config is empty (the deprecated
# flwr.simulation.run_simulation() API passes an EMPTY run_config).
DEFAULTS = {
    "result-path": "/tmp/flwr-probe/result.json",
    "num-nodes": 3,
    "rounds": 3,
    "dim": 8,
    "reply-timeout": 60.0,
    "wait-nodes-timeout": 60.0,
    "slow-round": False,
    "slow-sleep": 30.0,
    "slow-timeout": 120.0,
    "marker-path": "/tmp/flwr-probe/slow_round_started",
    # 0 -> use grid.send_and_receive (HttpGrid polls replies only every 3 s in
    # deployment!); >0 -> push_messages + pull_messages polled at this interval.
    "fast-poll": 0.0,
    "fail-partition": -1,  # ClientApp with this partition-id raises (error-reply test)
}


def send_and_receive_fast(grid: Grid, msgs, timeout: float, poll: float):
    """Like Grid.send_and_receive but with a configurable poll interval.

    Returns (replies, {message_id: dst_node_id}) so that error replies (whose
    src_node_id may be the SuperLink's id, e.g. 1, not the dead node's) can be
    mapped back to the destination node via reply.metadata.reply_to_message_id.
    """
    dst = [m.metadata.dst_node_id for m in msgs]
    ids = list(grid.push_messages(msgs))
    id2node = dict(zip(ids, dst))
    pending = set(ids)
    out = []
    end = time.time() + timeout
    while pending and time.time() < end:
        got = list(grid.pull_messages(pending))
        out.extend(got)
        pending.difference_update(r.metadata.reply_to_message_id for r in got)
        if pending:
            time.sleep(poll)
    return out, id2node


def _write(path: str, result: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=str)
    os.replace(tmp, path)


def _one_round(grid: Grid, node_ids, dim: int, sleep: float, timeout: float, rnd: int, poll: float = 0.0, fail: int = -1):
    msgs = [
        Message(
            content=RecordDict({"cfg": ConfigRecord({"dim": dim, "sleep": sleep, "fail-partition": fail})}),
            dst_node_id=nid,
            message_type="query.embed",
            group_id=str(rnd),
        )
        for nid in node_ids
    ]
    dst = [m.metadata.dst_node_id for m in msgs]
    t0 = time.perf_counter()
    if poll > 0:
        replies, id2node = send_and_receive_fast(grid, msgs, timeout, poll)
    else:
        replies = list(grid.send_and_receive(msgs, timeout=timeout))
        # message_id is set on the sent Message objects by push_messages
        id2node = {m.metadata.message_id: d for m, d in zip(msgs, dst)}
    rtt = time.perf_counter() - t0
    out = []
    for r in replies:
        entry = {
            "src_node_id": r.metadata.src_node_id,
            "for_node": id2node.get(r.metadata.reply_to_message_id),
        }
        if r.has_error():
            entry["error"] = {"code": r.error.code, "reason": r.error.reason}
        else:
            emb = r.content["emb"]["emb"].numpy()
            info = dict(r.content["info"])
            entry.update({"emb": emb.tolist(), "info": info})
        out.append(entry)
    return {"round": rnd, "rtt_s": rtt, "n_sent": len(msgs), "n_replies": len(replies), "replies": out}


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = {**DEFAULTS, **dict(context.run_config)}
    path = str(cfg["result-path"])
    n_expected = int(cfg["num-nodes"])
    dim = int(cfg["dim"])
    result: dict = {"status": "started", "run_config": dict(context.run_config), "rounds": []}
    _write(path, result)

    # 1) wait for the expected number of nodes
    t0 = time.perf_counter()
    deadline = time.monotonic() + float(cfg["wait-nodes-timeout"])
    node_ids: list[int] = []
    while time.monotonic() < deadline:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= n_expected:
            break
        time.sleep(0.5)
    result["wait_nodes_s"] = time.perf_counter() - t0
    result["node_ids"] = node_ids
    if len(node_ids) < n_expected:
        result["status"] = f"only {len(node_ids)} of {n_expected} nodes"
        _write(path, result)
        raise RuntimeError(result["status"])

    # 2) normal rounds
    for rnd in range(1, int(cfg["rounds"]) + 1):
        result["rounds"].append(
            _one_round(grid, node_ids, dim, 0.0, float(cfg["reply-timeout"]), rnd, float(cfg["fast-poll"]), int(cfg["fail-partition"]))
        )
        _write(path, result)

    # 3) optional slow round (kill-a-SuperNode experiment)
    if bool(cfg["slow-round"]):
        with open(str(cfg["marker-path"]), "w", encoding="utf-8") as f:
            f.write(str(time.time()))
        result["slow_round_started_at"] = time.time()
        _write(path, result)
        r = _one_round(
            grid, node_ids, dim, float(cfg["slow-sleep"]), float(cfg["slow-timeout"]), 99,
            float(cfg["fast-poll"]),
        )
        r["ended_at"] = time.time()
        result["slow_round"] = r
        result["node_ids_after_slow_round"] = sorted(grid.get_node_ids())

    result["status"] = "ok"
    _write(path, result)
    print(f"PROBE DONE: wrote {path}")
