"""Transports carry protocol requests from the server to the parties.

The server talks to parties only through :meth:`Transport.exchange`, one round trip that
sends one request to each named party and returns their replies. Runtimes provide the
transports (direct calls here; Flower messages and Ray actor calls elsewhere); every transport
counts the bytes of every message in the same way, through the messages' ``nbytes``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from vfl_sim.protocol import Reply, Request


class PartyEndpoint(Protocol):
    """What a transport needs from a party: answer one request."""

    party_id: str

    def handle(self, request: Request) -> Reply: ...


@dataclass
class CommStats:
    """Messages and bytes exchanged, in total and per party."""

    rounds: int = 0
    messages: int = 0
    bytes_to_parties: dict[str, int] = field(default_factory=dict)
    bytes_to_server: dict[str, int] = field(default_factory=dict)

    def record(self, party_id: str, request: Request, reply: Reply) -> None:
        self.messages += 1
        self.bytes_to_parties[party_id] = self.bytes_to_parties.get(party_id, 0) + request.nbytes()
        self.bytes_to_server[party_id] = self.bytes_to_server.get(party_id, 0) + reply.nbytes()

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_to_parties.values()) + sum(self.bytes_to_server.values())

    def snapshot(self) -> CommStats:
        return CommStats(self.rounds, self.messages, dict(self.bytes_to_parties), dict(self.bytes_to_server))

    def since(self, earlier: CommStats) -> CommStats:
        """The traffic between ``earlier`` (a snapshot) and now."""
        return CommStats(
            self.rounds - earlier.rounds,
            self.messages - earlier.messages,
            {k: v - earlier.bytes_to_parties.get(k, 0) for k, v in self.bytes_to_parties.items()},
            {k: v - earlier.bytes_to_server.get(k, 0) for k, v in self.bytes_to_server.items()},
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "rounds": self.rounds,
            "messages": self.messages,
            "bytes_total": self.total_bytes,
            "bytes_to_parties": dict(self.bytes_to_parties),
            "bytes_to_server": dict(self.bytes_to_server),
        }


class Transport(ABC):
    """Carries one round of requests to the parties and brings back their replies."""

    def __init__(self, party_ids: list[str]) -> None:
        self.party_ids = list(party_ids)
        self.stats = CommStats()
        # Observers of every round's requests, as the parties will receive them (audits of
        # what a party sees: vfl_sim.audits.request_leakage).
        self.taps: list[Callable[[Mapping[str, Request]], None]] = []

    def exchange(self, requests: Mapping[str, Request]) -> dict[str, Reply]:
        """Send ``requests[party_id]`` to each named party; return the replies by party id."""
        unknown = set(requests) - set(self.party_ids)
        if unknown:
            raise KeyError(f"no such parties: {sorted(unknown)}")
        for tap in self.taps:
            tap(requests)
        replies = self._exchange(requests)
        self.stats.rounds += 1
        for pid, request in requests.items():
            self.stats.record(pid, request, replies[pid])
        return replies

    def broadcast(self, request: Request) -> dict[str, Reply]:
        """Send the same request to every party."""
        return self.exchange({pid: request for pid in self.party_ids})

    @abstractmethod
    def _exchange(self, requests: Mapping[str, Request]) -> dict[str, Reply]: ...

    def close(self) -> None:  # noqa: B027  (a no-op by default: in-process transports hold nothing)
        """Release processes or connections the transport holds."""


class LocalTransport(Transport):
    """Direct in-process calls: the reference transport, exact and without serialization."""

    def __init__(self, parties: Mapping[str, PartyEndpoint]) -> None:
        super().__init__(list(parties))
        self._parties = dict(parties)

    @property
    def parties(self) -> dict[str, PartyEndpoint]:
        """The in-process party objects, by id (for benchmarks and tests that inspect them)."""
        return dict(self._parties)

    def _exchange(self, requests: Mapping[str, Request]) -> dict[str, Reply]:
        return {pid: self._parties[pid].handle(req) for pid, req in requests.items()}
