"""The privacy ledger: every noise event recorded, composed, and checked against the budget.

The ledger, not the config, reports epsilon. Before a round the runner asks
:meth:`PrivacyLedger.check` whether the round's planned events would push
user-level epsilon, or any participating client's record-level epsilon, past
its budget; if so the run stops with :class:`~privfed.errors.PrivacyBudgetExceeded`
before anything is spent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from privfed.errors import PrivacyBudgetExceeded
from privfed.privacy.accountants import compute_epsilon
from privfed.privacy.events import PrivacyEvent, PrivacyEventJSON, SampledGaussianEvent, event_from_json

__all__ = ["PrivacyLedger"]


class PrivacyLedger:
    """Append-only record of privacy events with per-client composition.

    Args:
        delta: the delta at which epsilon is reported.
        accountant: ``"rdp"`` or ``"prv"``.
        user_budget: largest allowed user-level epsilon (``None``: unlimited).
        sample_budget: largest allowed record-level epsilon of any client (``None``: unlimited).
    """

    def __init__(
        self, *, delta: float, accountant: str, user_budget: float | None = None, sample_budget: float | None = None
    ) -> None:
        self.delta = delta
        self.accountant = accountant
        self.user_budget = user_budget
        self.sample_budget = sample_budget
        self.events: list[PrivacyEvent] = []
        self._sample_cache: dict[int, float] = {}
        self._by_subject: dict[int, list[PrivacyEvent]] = {}
        # Epsilon of a composition depends only on its total steps per (sigma, q): clients that
        # took part equally often at the same rate share it, so it is computed once.
        self._history_cache: dict[tuple[tuple[object, int], ...], float] = {}

    def _user_events(self) -> list[PrivacyEvent]:
        return [e for e in self.events if e.scope == "user"]

    def _client_events(self, client: int) -> list[PrivacyEvent]:
        return list(self._by_subject.get(client, ()))

    def epsilon(self, events: Sequence[PrivacyEvent]) -> float:
        # Composition is commutative: the total steps per event shape determine epsilon.
        totals: dict[tuple[object, ...], int] = {}
        for e in events:
            if e.steps > 0:
                totals[_shape(e)] = totals.get(_shape(e), 0) + e.steps
        key = tuple(sorted(((shape, steps) for shape, steps in totals.items()), key=repr))
        if key not in self._history_cache:
            if len(self._history_cache) >= 65536:  # bounded: long runs with many distinct histories
                self._history_cache.clear()
            self._history_cache[key] = compute_epsilon(events, delta=self.delta, accountant=self.accountant)
        return self._history_cache[key]

    def epsilon_user(self) -> float:
        """User-level epsilon spent so far."""
        return self.epsilon(self._user_events())

    def epsilon_sample(self, client: int) -> float:
        """Record-level epsilon spent so far by ``client``."""
        if client not in self._sample_cache:
            self._sample_cache[client] = self.epsilon(self._client_events(client))
        return self._sample_cache[client]

    def epsilon_sample_max(self) -> float:
        """The largest record-level epsilon over all clients (0 if none)."""
        return max((self.epsilon_sample(c) for c in self._by_subject), default=0.0)

    def check(self, planned: Iterable[PrivacyEvent]) -> None:
        """Raise :class:`PrivacyBudgetExceeded` if recording ``planned`` would exceed a budget."""
        planned = list(planned)
        if self.user_budget is not None and any(e.scope == "user" for e in planned):
            after = self.epsilon(self._user_events() + [e for e in planned if e.scope == "user"])
            if after > self.user_budget * (1 + 1e-9):
                raise PrivacyBudgetExceeded(
                    f"the next round would raise user-level epsilon to {after:.4g} "
                    f"(budget {self.user_budget:g} at delta {self.delta:g})"
                )
        if self.sample_budget is not None:
            for client in sorted({e.subject for e in planned if e.scope == "sample" and e.subject is not None}):
                mine = [e for e in planned if e.scope == "sample" and e.subject == client]
                after = self.epsilon(self._client_events(client) + mine)
                if after > self.sample_budget * (1 + 1e-9):
                    raise PrivacyBudgetExceeded(
                        f"the next round would raise client {client}'s record-level epsilon to {after:.4g} "
                        f"(budget {self.sample_budget:g} at delta {self.delta:g})"
                    )

    def record(self, events: Iterable[PrivacyEvent]) -> None:
        for event in events:
            self._append(event)

    def _append(self, event: PrivacyEvent) -> None:
        self.events.append(event)
        if event.scope == "sample" and event.subject is not None:
            self._by_subject.setdefault(event.subject, []).append(event)
            self._sample_cache.pop(event.subject, None)

    def to_json(self) -> list[PrivacyEventJSON]:
        return [e.to_json() for e in self.events]

    def load_json(self, raw: Sequence[Mapping[str, Any]]) -> None:
        self.events = []
        self._by_subject.clear()
        self._sample_cache.clear()
        for r in raw:
            self._append(event_from_json(r))


def _shape(event: PrivacyEvent) -> tuple[object, ...]:
    """What besides ``steps`` decides an event's privacy cost (its class and noise parameters)."""
    if isinstance(event, SampledGaussianEvent):
        return ("gaussian", event.noise_multiplier, event.sample_rate)
    return (event.mechanism, event.noise_multiplier, event.sample_rate, event.shares, event.l2_sensitivity, event.dim)
