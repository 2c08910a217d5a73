"""The library's loopback server with scripted faults, for download tests: nothing beyond 127.0.0.1 is
ever contacted. A route can fail its first requests or drop the connection half-way, like a flaky host."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from xsae.rehearsal.datasets import Fault, LoopbackServer, Route, Seen

__all__ = ["LoopbackServer", "ScriptedRoute", "Seen", "loopback_server"]


@dataclass
class ScriptedRoute(Route):
    """A route whose first requests fail (`fail_first`) or are cut short (`drop_first`)."""

    fail_first: int = 0  # the first N requests answer `fail_status`
    fail_status: int = 503
    retry_after: str | None = None
    drop_first: int = 0  # the next N requests send half the body (full Content-Length), then close

    def fault(self, hit: int) -> Fault | None:
        if hit < self.fail_first:
            return Fault(status=self.fail_status,
                         headers={"Retry-After": self.retry_after} if self.retry_after else {})
        if hit < self.fail_first + self.drop_first:
            return Fault(truncate=True)
        return None


@contextlib.contextmanager
def loopback_server() -> Iterator[LoopbackServer]:
    """Serve scripted routes on an ephemeral loopback port; stopped when the block ends."""
    with LoopbackServer(route_class=ScriptedRoute) as server:
        yield server
