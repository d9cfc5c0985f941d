"""One generation at a time: a worker thread, a bounded FIFO queue, cancellation and deadlines.

A model runs one request at a time (its KV cache and the CPU are not to be shared), so the
event loop never calls it. Each request becomes a :class:`Ticket` in a first-in first-out queue
that holds at most ``max_queue`` waiting requests (a new one beyond that is refused at once,
which the app turns into a 429). The worker thread takes the oldest ticket, runs its work and
hands each result back to the event loop.

No request waits forever: every ticket has a deadline ``request_timeout`` seconds after it was
submitted. A ticket still waiting at its deadline is dropped from the queue, and one running
past it is stopped between two tokens; either way its reader gets :class:`RequestTimeout`. A
reader that goes away (a client that disconnects) cancels its ticket, which frees the worker
after at most one more token.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

__all__ = ["GenerationQueue", "QueueClosed", "QueueFull", "RequestTimeout", "Ticket"]

Work = Callable[[Callable[[], bool]], Iterator[Any]]  # gets `cancelled`, yields results


class QueueFull(RuntimeError):
    """The queue already holds ``max_queue`` waiting requests."""


class RequestTimeout(RuntimeError):
    """A request was still waiting or running at its deadline."""


class QueueClosed(RuntimeError):
    """The server is shutting down and takes no more requests."""


_END = object()  # the work finished normally


class Ticket:
    """One request's place in the queue and the channel its results come back through."""

    def __init__(self, work: Work, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self.work = work
        self.loop = loop
        self.deadline = deadline  # time.monotonic() by which the request must be done
        self.results: asyncio.Queue[Any] = asyncio.Queue()
        self.cancel_event = threading.Event()
        self.started = threading.Event()  # the worker has begun this ticket's work

    def cancel(self) -> None:
        """Stop this request: drop it from the queue, or stop its generation at the next token."""
        self.cancel_event.set()

    def cancelled(self) -> bool:
        """True once cancelled or past the deadline (checked by the work between tokens)."""
        return self.cancel_event.is_set() or time.monotonic() > self.deadline

    def _put(self, item: Any) -> None:
        """Hand a result to the event loop (called from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.results.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            self.cancel_event.set()

    async def results_until(self, poll: Callable[[], Any] | None = None) -> AsyncIterator[Any]:
        """Yield the results as they come; raise what the work raised, or RequestTimeout.

        ``poll`` (an async callable returning True when the reader is gone) is awaited about
        four times a second while waiting, so a vanished reader cancels the ticket even while
        it is still queued. Leaving the loop early cancels the ticket too.
        """
        try:
            while True:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise RequestTimeout(self._timeout_message())
                try:
                    item = await asyncio.wait_for(self.results.get(), min(0.25, remaining))
                except asyncio.TimeoutError:
                    if poll is not None and await poll():
                        return
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()

    def _timeout_message(self) -> str:
        where = "running" if self.started.is_set() else "waiting in the queue"
        return f"the request was still {where} at its deadline (request_timeout)"


class GenerationQueue:
    """A FIFO of :class:`Ticket`\\ s served by one worker thread.

    ``max_queue`` bounds the tickets *waiting* (the running one does not count);
    ``request_timeout`` is each ticket's time limit in seconds from submission.
    """

    def __init__(self, *, max_queue: int, request_timeout: float) -> None:
        self.check(max_queue=max_queue, request_timeout=request_timeout)
        self.max_queue = max_queue
        self.request_timeout = float(request_timeout)
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._lock = threading.Condition()
        self._closed = False
        self._running: Ticket | None = None
        self._thread = threading.Thread(target=self._serve, name="gptlab-generation", daemon=True)
        self._thread.start()

    @staticmethod
    def check(*, max_queue: Any, request_timeout: Any) -> None:
        """Raise ValueError unless ``max_queue`` is an int >= 1 and ``request_timeout`` > 0."""
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an int >= 1, got {max_queue!r}")
        if isinstance(request_timeout, bool) or not (
            isinstance(request_timeout, (int, float)) and request_timeout > 0
        ):
            raise ValueError(
                f"request_timeout must be a number of seconds > 0, got {request_timeout!r}"
            )

    @property
    def waiting(self) -> int:
        """How many requests wait for the worker."""
        with self._lock:
            return sum(not t.cancel_event.is_set() for t in self._waiting)

    @property
    def busy(self) -> bool:
        """Whether the worker is generating for a request now."""
        with self._lock:
            return self._running is not None

    def submit(self, work: Work) -> Ticket:
        """Queue ``work`` (called from the event loop); raise QueueFull or QueueClosed."""
        ticket = Ticket(work, asyncio.get_running_loop(), time.monotonic() + self.request_timeout)
        with self._lock:
            if self._closed:
                raise QueueClosed("the server is shutting down")
            self._drop_cancelled()
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(
                    f"{len(self._waiting)} requests are already waiting for the model "
                    f"(max_queue={self.max_queue}); retry later"
                )
            self._waiting.append(ticket)
            self._lock.notify()
        return ticket

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new work, cancel what waits and what runs, and wait for the worker to stop."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            if self._running is not None:
                self._running.cancel()
            self._lock.notify()
        for ticket in waiting:
            ticket._put(QueueClosed("the server is shutting down"))
        self._thread.join(timeout)

    def _drop_cancelled(self) -> None:
        """Forget waiting tickets whose reader left or whose deadline passed (lock held)."""
        for ticket in [t for t in self._waiting if t.cancelled()]:
            self._waiting.remove(ticket)
            if not ticket.cancel_event.is_set():
                ticket._put(RequestTimeout(ticket._timeout_message()))

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                self._drop_cancelled()
                if not self._waiting:
                    continue
                ticket = self._running = self._waiting.popleft()
            ticket.started.set()
            try:
                for result in ticket.work(ticket.cancelled):
                    ticket._put(result)
                    if ticket.cancelled():
                        break
                if ticket.cancelled() and not ticket.cancel_event.is_set():
                    ticket._put(RequestTimeout(ticket._timeout_message()))
                else:
                    ticket._put(_END)
            except Exception as err:  # handed to the request that caused it
                ticket._put(err)
            finally:
                with self._lock:
                    self._running = None
