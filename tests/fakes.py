"""Stand-ins shared by the tests: a transport that returns pre-built replies."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from privfed.errors import ProtocolError
from privfed.transport import ClientUpdate, Exchange, Reply


def claimed_sender(raw: bytes, *, fallback: int) -> int:
    """The node a reply comes from: the client it names, as an honest network would deliver it."""
    try:
        return ClientUpdate.from_bytes(raw).client_id
    except ProtocolError:
        return fallback


class ScriptedTransport:
    """Returns pre-built replies (``replies(cohort) -> [bytes]``), as a faulty or malicious network might."""

    def __init__(self, replies: Callable[[Sequence[int]], list[bytes]]) -> None:
        self.replies = replies

    def exchange(
        self,
        messages: Mapping[int, bytes],
        *,
        round: int,
        stage: str,
        on_reply: Callable[[int], None] | None = None,
    ) -> Exchange:
        uploads = self.replies(list(messages))
        replies = tuple(Reply(claimed_sender(u, fallback=min(messages)), u) for u in uploads)
        return Exchange(replies, sum(map(len, messages.values())), sum(map(len, uploads)))
