"""The server's side of the Flower runtime: protocol rounds as Flower messages on a ``Grid``.

One :meth:`FlowerTransport.exchange` is one round: one message per addressed party pushed to
the grid, then the replies pulled every ``poll_interval`` seconds until all are in (Flower's
own ``send_and_receive`` sleeps 3 s between pulls in a deployment, which would cost every
training step 3 s). Parties are found by asking every connected node for its
``partition-id`` (Flower does not expose node configs to the ServerApp); the transport waits
until all of them are connected and fails with the missing party ids after a timeout instead
of hanging, and refuses a second connected node that claims a partition id already taken
(:func:`assign_parties`). Bytes are counted with Flower's own ``count_bytes`` of each message's records.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from vfl_sim.protocol import Reply, Request
from vfl_sim.runtimes.flower_codec import content_nbytes, decode_reply, encode_request
from vfl_sim.transport import Transport

HELLO = "query.hello"


class PartyUnavailableError(RuntimeError):
    """A party did not connect, or stopped answering, within the configured time."""


class DuplicatePartitionError(PartyUnavailableError):
    """Two connected SuperNodes say they are the same party (the same ``partition-id``)."""


def assign_parties(
    nodes: Mapping[str, int], party_ids: Sequence[str], announced: Mapping[int, int], connected: Collection[int]
) -> dict[str, int]:
    """Party id -> node id: ``nodes`` with the nodes in ``announced`` (node id -> the
    ``partition-id`` it answered) added.

    A partition id out of range is no party (the node is left out). One that a node in
    ``connected`` already holds is refused with :class:`DuplicatePartitionError`: the parties'
    data and models must not be split between two nodes, nor the second left waiting. A node
    that is no longer connected gives its party up to the one that announced it since (a
    SuperNode restarted with a new node id).
    """
    out = dict(nodes)
    for node, partition in announced.items():
        if not 0 <= partition < len(party_ids):
            continue
        party = party_ids[partition]
        holder = out.get(party)
        if holder is not None and holder != node and holder in connected:
            raise DuplicatePartitionError(
                f"two SuperNodes have partition-id {partition} ({party}): nodes {holder} and {node}; "
                "give each SuperNode its own --node-config 'partition-id=K'"
            )
        out[party] = node
    return out


class FlowerTransport(Transport):
    """Protocol rounds over a Flower ``Grid``.

    Parameters
    ----------
    grid
        The ServerApp's grid.
    party_ids
        Parties in order; party ``k`` is the node whose ``node_config["partition-id"]`` is ``k``.
    connect_timeout
        Seconds to wait for every party's node to connect.
    round_timeout
        Seconds to wait for the replies of one round.
    poll_interval
        Seconds between pulls of replies (and between looks at the connected nodes while
        waiting for them).
    """

    def __init__(
        self,
        grid: Grid,
        party_ids: list[str],
        *,
        connect_timeout: float = 120.0,
        round_timeout: float = 120.0,
        poll_interval: float = 0.05,
    ) -> None:
        super().__init__(party_ids)
        self.grid = grid
        self.round_timeout = round_timeout
        self.poll_interval = poll_interval
        # Flower's own count of the message contents, beside the protocol's count in ``stats``.
        self.flower_bytes_to_parties: dict[str, int] = {}
        self.flower_bytes_to_server: dict[str, int] = {}
        self.nodes = self._discover(connect_timeout, poll_interval)

    def _discover(self, timeout: float, poll: float) -> dict[str, int]:
        """Map every party id to its node id, waiting for late nodes up to ``timeout``."""
        deadline = time.monotonic() + timeout
        nodes: dict[str, int] = {}
        asked: set[int] = set()
        errors: dict[int, str] = {}
        while True:
            connected = list(self.grid.get_node_ids())
            new = [nid for nid in connected if nid not in asked]
            if new:
                hellos = [Message(RecordDict(), dst_node_id=nid, message_type=HELLO) for nid in new]
                replies = self._round(hellos, timeout=max(1.0, deadline - time.monotonic()))
                announced: dict[int, int] = {}
                for nid, reply in zip(new, replies):
                    if reply is None:
                        continue
                    if reply.has_error():
                        errors[nid] = str(reply.error.reason)
                        continue
                    asked.add(nid)
                    announced[nid] = int(str(reply.content.config_records["hello"]["partition-id"]))
                nodes = assign_parties(nodes, self.party_ids, announced, connected)
            if len(nodes) == len(self.party_ids):
                return nodes
            if time.monotonic() >= deadline:
                missing = [pid for pid in self.party_ids if pid not in nodes]
                failed = "".join(f"; node {nid} answered: {reason}" for nid, reason in errors.items())
                raise PartyUnavailableError(
                    f"parties {', '.join(missing)} did not connect within {timeout:.0f}s "
                    f"({len(nodes)} of {len(self.party_ids)} connected); start a SuperNode with "
                    f"--node-config 'partition-id=K' for each{failed}"
                )
            time.sleep(poll)

    def _round(self, messages: list[Message], timeout: float) -> list[Message | None]:
        """Push ``messages``, pull until each has its reply or ``timeout``; replies in message
        order (``None`` where none came).

        Replies are matched by the id of the message they answer: an error reply that the
        SuperLink writes for a node that died comes from the SuperLink, not from that node.
        """
        ids = list(self.grid.push_messages(messages))
        waiting = set(ids)
        got: dict[str, Message] = {}
        deadline = time.monotonic() + timeout
        while waiting:
            for reply in self.grid.pull_messages(list(waiting)):
                got[reply.metadata.reply_to_message_id] = reply
                waiting.discard(reply.metadata.reply_to_message_id)
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_interval)
        return [got.get(m.metadata.message_id) for m in messages]

    def _exchange(self, requests: Mapping[str, Request]) -> dict[str, Reply]:
        pids = list(requests)
        sent: list[Message] = []
        for pid in pids:
            kind, content = encode_request(requests[pid])
            sent.append(Message(content, dst_node_id=self.nodes[pid], message_type=kind))
        replies: dict[str, Reply] = {}
        missing: list[str] = []
        for pid, message, reply in zip(pids, sent, self._round(sent, self.round_timeout)):
            if reply is None:
                missing.append(pid)
                continue
            if reply.has_error():
                raise PartyUnavailableError(f"{pid} answered with an error: {reply.error.reason}")
            replies[pid] = decode_reply(reply.content)
            self._count(pid, message, reply)
        if missing:
            raise PartyUnavailableError(
                f"no reply from {', '.join(missing)} within {self.round_timeout:.0f}s; the party may have stopped"
            )
        return replies

    def _count(self, pid: str, sent: Message, reply: Message) -> None:
        self.flower_bytes_to_parties[pid] = self.flower_bytes_to_parties.get(pid, 0) + content_nbytes(sent.content)
        self.flower_bytes_to_server[pid] = self.flower_bytes_to_server.get(pid, 0) + content_nbytes(reply.content)


def hello_reply(message: Message, partition_id: int) -> Message:
    """The ClientApp's answer to the discovery query."""
    return Message(RecordDict({"hello": ConfigRecord({"partition-id": partition_id})}), reply_to=message)
