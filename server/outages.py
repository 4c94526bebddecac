"""Outages of the components a process depends on (the database: `store`; Redis: `bus`), as
its background loops see them.

A loop that ticks every second during a 45 s database outage must not write 45 tracebacks:
an outage is logged once when it starts (what failed, and why) and once when it ends (with
how long it lasted), counted in `chatcast_outages_total{component}`, and shown by
`chatcast_component_up{component}`. An error that is not an outage (a bug) is logged with
its traceback once per loop until that loop succeeds again. Either way the loop goes on: a
background loop of this process never dies of an exception.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from chatcast.core.errors import StorageUnavailable
from chatcast.server import metrics
from chatcast.server.bus.base import BusUnavailable

log = logging.getLogger("chatcast.outages")

STORE, BUS = "store", "bus"
_WHAT = {STORE: "database", BUS: "bus"}


class Availability:
    """One component: up, or down since when (and why)."""

    def __init__(self, component: str) -> None:
        self.component = component
        self.down_since: float | None = None
        self.reason = ""

    @property
    def up(self) -> bool:
        return self.down_since is None

    def down(self, exc: BaseException, during: str) -> None:
        """A call to the component failed because it cannot be reached. Logged and counted
        only when this starts an outage."""
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        self.reason = str(exc.__cause__ or exc)
        metrics.OUTAGES.labels(self.component).inc()
        metrics.COMPONENT_UP.labels(self.component).set(0)
        log.error("%s unavailable", _WHAT[self.component],
                  extra={"component": self.component, "during": during,
                         "reason": self.reason[:300]})

    def back(self) -> float | None:
        """A call to the component succeeded: ends an outage (logged with its duration,
        returned in seconds); None if there was none."""
        if self.down_since is None:
            return None
        lasted = time.monotonic() - self.down_since
        self.down_since = None
        metrics.COMPONENT_UP.labels(self.component).set(1)
        log.warning("%s back", _WHAT[self.component],
                    extra={"component": self.component, "outage_s": round(lasted, 3)})
        return lasted


class Outages:
    """The components of one process, and how its background loops survive errors."""

    def __init__(self) -> None:
        self.store = Availability(STORE)
        self.bus = Availability(BUS)
        self._failing: set[str] = set()  # loops whose last tick failed unexpectedly

    def component_of(self, exc: BaseException) -> Availability | None:
        """The component an error says is unreachable, if it says so."""
        if isinstance(exc, StorageUnavailable):
            return self.store
        if isinstance(exc, BusUnavailable):
            return self.bus
        return None

    def failed(self, exc: Exception, during: str) -> None:
        """A tick of loop `during` failed with `exc`: an outage, or a bug."""
        component = self.component_of(exc)
        if component is not None:
            component.down(exc, during)
        elif during not in self._failing:
            self._failing.add(during)
            log.error("%s failed; it goes on", during, exc_info=exc)
        else:
            log.debug("%s failed again: %r", during, exc)

    def succeeded(self, during: str, *uses: Availability) -> None:
        """A tick of loop `during` worked, using the components `uses`."""
        self._failing.discard(during)
        for component in uses:
            component.back()

    def seen(self, *, store: bool, bus: bool) -> None:
        """What a readiness check found (it catches its own errors): outages start and end
        by it too, also on a process whose loops are idle."""
        for component, ok in ((self.store, store), (self.bus, bus)):
            if ok:
                component.back()
            else:
                component.down(RuntimeError("no answer to the readiness check"), "readyz")

    @contextlib.contextmanager
    def tick(self, during: str, *uses: Availability) -> Iterator[None]:
        """One tick of a background loop: any exception is reported (`failed`) and
        swallowed, success ends the outages of the components it used."""
        try:
            yield
        except Exception as exc:
            self.failed(exc, during)
        else:
            self.succeeded(during, *uses)
