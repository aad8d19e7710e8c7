"""Run deployments' scheduled flow runs inside this long-lived process.

Prefect 3.9 has no in-process execution mode: `serve()` and workers start a
process per flow run, which costs more than a micro-batch and loses module
state (open DuckDB connection, loaded model). `InProcessExecutor` does the
runner's job with public client calls instead: poll the deployments' due runs,
claim each by proposing Pending (the server applies the deployment's
concurrency limit at that step), and execute it with `run_flow` as an asyncio
task.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import datetime as dt
import functools
import logging
import signal
import threading
from asyncio import FIRST_COMPLETED
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import (
    FlowRun,
    StateType,
)
from prefect.context import AsyncClientContext
from prefect.exceptions import Abort
from prefect.flow_engine import run_flow
from prefect.states import Cancelled, Crashed, Pending, State
from prefect.utilities.engine import propose_state

logger = logging.getLogger(__name__)


class _LeaseGoneAfterRun(logging.Filter):
    """Drop the retry warning of a lease renewal that lost the race against the run.

    The engine starts a thread that renews the deployment's concurrency lease;
    a run that finishes first releases the lease, and that thread's first renew
    then gets 410 Gone (about a third of sub-second runs). A real renewal
    failure still ends in an ERROR record after the last attempt.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and "410 Gone" in record.getMessage())


_CONCURRENCY_LOGGER = logging.getLogger("prefect.concurrency")


@dataclass
class _ActiveRun:
    flow_run_id: UUID
    task: asyncio.Task[None]
    cancel_requested: bool = False


class InProcessExecutor:
    """Execute the scheduled runs of some deployments in the current process.

    `flows` maps each deployment id to the (async) flow object to run for it.
    Runs of one deployment execute one at a time; runs of different
    deployments may overlap. An auto-scheduled run more than `max_lateness`
    seconds past due is cancelled instead of run, so a loop slower than its
    schedule drops runs rather than building a backlog; runs created by hand
    (UI, `prefect deployment run`, backfills) are always executed.

    Assumes it is the only executor of these deployments: on start it marks
    their Pending/Running runs Crashed, since with no subprocess per run those
    can only be left over from a killed predecessor.
    """

    def __init__(
        self,
        flows: Mapping[UUID, Flow[..., Any]],
        *,
        poll_interval: float = 0.5,
        max_lateness: float = 60.0,
        shutdown_timeout: float = 30.0,
    ) -> None:
        for deployment_id, flow in flows.items():
            # A sync flow would block the event loop (and with it polling and
            # cancellation) for the whole run; run_flow_sync also waits ~1 s
            # for its heartbeat thread on exit.
            if not flow.isasync or flow.isgenerator:
                raise TypeError(
                    f"flow {flow.name!r} of deployment {deployment_id} must be a "
                    "plain `async def` flow to run in-process"
                )
        if not any(isinstance(f, _LeaseGoneAfterRun) for f in _CONCURRENCY_LOGGER.filters):
            _CONCURRENCY_LOGGER.addFilter(_LeaseGoneAfterRun())
        self._flows = dict(flows)
        self._poll_interval = poll_interval
        self._max_lateness = dt.timedelta(seconds=max_lateness)
        self._shutdown_timeout = shutdown_timeout
        self._active: dict[UUID, _ActiveRun] = {}
        self._finished = asyncio.Event()  # a run ended: poll again at once
        self.stats: collections.Counter[str] = collections.Counter()
        """Counts of claimed, skipped_late, rejected, completed, failed, cancelled,
        interrupted, crashed_leftovers and poll_errors, for monitoring and tests."""

    def serve(self) -> None:
        """Run until SIGINT or SIGTERM, then drain as `run` does; return when done.

        A second signal cancels the runs still in flight (the engine reports
        them Crashed). Call it from the main thread. The event loop runs in a
        worker thread because, while a run is in progress, Prefect's engine
        swaps the main thread's SIGTERM handler for one that raises
        TerminationSignal wherever that thread happens to be (inside the event
        loop's select, or a poll), which would kill the loop instead of
        stopping it; off the main thread the engine leaves signals alone.
        """
        loop: asyncio.AbstractEventLoop | None = None
        stop: asyncio.Event | None = None
        failure: list[BaseException] = []

        async def main() -> None:
            nonlocal loop, stop
            loop, stop = asyncio.get_running_loop(), asyncio.Event()
            if signals:  # signalled before the loop existed
                stop.set()
            await self.run(stop)

        def target() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:
                failure.append(exc)

        signals = 0

        def on_signal(signum: int, _frame: object) -> None:
            nonlocal signals
            signals += 1
            logger.warning(
                "%s: %s",
                signal.Signals(signum).name,
                "stopping" if signals == 1 else "cancelling the runs in flight",
            )
            if loop is not None and stop is not None:
                loop.call_soon_threadsafe(stop.set if signals == 1 else self._cancel_active)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            # A new thread starts with empty contextvars: carry over the caller's
            # Prefect settings context (e.g. temporary_settings).
            context = contextvars.copy_context()
            thread = threading.Thread(target=context.run, args=(target,), name="tidemill-executor")
            thread.start()
            while thread.is_alive():
                thread.join(0.2)  # a timed join lets the signal handlers run
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if failure:
            raise failure[0]

    def _cancel_active(self) -> None:
        for active in self._active.values():
            active.task.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and execute until `stop` is set, then wait for the runs in flight.

        Returns once every started run has finished, or has been cancelled
        (the engine then reports it Crashed) after `shutdown_timeout` seconds.
        Must not run in the main thread if that thread may receive SIGTERM:
        see `serve`, which also handles the signals.
        """
        # Entering the client context (rather than a bare get_client()) lets each
        # run_flow reuse this client instead of opening its own per run.
        self._finished = asyncio.Event()  # bound to this loop
        async with AsyncClientContext.get_or_create() as client_context:
            client = client_context.client
            leftovers_crashed = False
            try:
                while not stop.is_set():
                    try:
                        if not leftovers_crashed:  # before the first claim, once reachable
                            await self._crash_leftovers(client)
                            leftovers_crashed = True
                        await self._claim_due_runs(client)
                        await self._watch_cancellations(client)
                    except Exception as exc:
                        # The server can be briefly unavailable (restart, SQLite
                        # "database is locked" 503s): keep polling.
                        self.stats["poll_errors"] += 1
                        logger.warning("polling Prefect failed: %r", exc)
                    await self._sleep(stop)
            finally:
                await self._drain()

    async def _sleep(self, stop: asyncio.Event) -> None:
        """Wait a poll interval, less when `stop` is set or a run finishes: the next run
        of a deployment whose run took its whole interval is due already."""
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._finished.wait())]
        try:
            await asyncio.wait(waits, timeout=self._poll_interval, return_when=FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        self._finished.clear()

    async def _crash_leftovers(self, client: PrefectClient) -> None:
        stuck = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(self._flows))),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=stuck))
            ),
        )
        for fr in runs:
            # force=True: a run stuck in Running cannot otherwise leave it; the
            # server still releases its deployment concurrency slot.
            state: State[Any] = (
                Cancelled(message="Cancelled while its executor was down.")
                if fr.state_type == StateType.CANCELLING
                else Crashed(message="Its executor process exited during the run.")
            )
            await client.set_flow_run_state(fr.id, state, force=True)
            self.stats["crashed_leftovers"] += 1
            logger.warning("flow run %s left %s: marked %s", fr.id, fr.state_type, state.type)

    async def _claim_due_runs(self, client: PrefectClient) -> None:
        now = dt.datetime.now(dt.UTC)
        # Polling all deployments, busy ones included, keeps them "Ready" in the UI.
        due = await client.get_scheduled_flow_runs_for_deployments(
            deployment_ids=list(self._flows), scheduled_before=now
        )
        for fr in due:  # oldest first
            deployment_id = cast(UUID, fr.deployment_id)
            if deployment_id in self._active:
                continue  # stays Scheduled until the current run has finished
            scheduled = fr.next_scheduled_start_time or fr.expected_start_time or now
            if fr.auto_scheduled and now - scheduled > self._max_lateness:
                await self._skip_late(client, fr, now - scheduled)
                continue
            claimed = await self._claim(client, fr)
            if claimed is None:
                continue
            # The claimed state carries the concurrency lease id that the
            # engine renews while the run executes.
            fr.state = claimed
            flow = self._flows[deployment_id]
            task = asyncio.create_task(self._execute(flow, fr), name=f"flow-run-{fr.id}")
            self._active[deployment_id] = _ActiveRun(fr.id, task)
            task.add_done_callback(functools.partial(self._forget, deployment_id))

    def _forget(self, deployment_id: UUID, _task: asyncio.Task[None]) -> None:
        self._active.pop(deployment_id, None)
        self._finished.set()

    async def _claim(self, client: PrefectClient, fr: FlowRun) -> State[Any] | None:
        try:
            state = await propose_state(client, Pending(), flow_run_id=fr.id)
        except Abort as exc:  # claimed by someone else, or no longer Scheduled
            logger.info("flow run %s not claimed: %s", fr.id, exc)
            self.stats["rejected"] += 1
            return None
        if not state.is_pending():
            # CANCEL_NEW concurrency limit: the server answers Cancelled.
            logger.info("flow run %s not claimed: server set %s", fr.id, state.type)
            self.stats["rejected"] += 1
            return None
        self.stats["claimed"] += 1
        return state

    async def _skip_late(self, client: PrefectClient, fr: FlowRun, late: dt.timedelta) -> None:
        message = (
            f"Skipped: {late.total_seconds():.0f} s past due, more than the "
            f"executor's max_lateness of {self._max_lateness.total_seconds():.0f} s."
        )
        with contextlib.suppress(Abort):
            await propose_state(client, Cancelled(message=message), flow_run_id=fr.id)
        self.stats["skipped_late"] += 1
        logger.warning("flow run %s %s", fr.id, message)

    async def _execute(self, flow: Flow[..., Any], fr: FlowRun) -> None:
        """Run one claimed flow run; a failing flow ends Failed, never raises here."""
        try:
            # run_flow takes the parameters from fr.parameters (with the flow's
            # defaults) and returns a coroutine for an async flow.
            coro = cast(
                Coroutine[Any, Any, State[Any]], run_flow(flow, flow_run=fr, return_type="state")
            )
            state = await coro
        except asyncio.CancelledError:
            active = self._active.get(cast(UUID, fr.deployment_id))
            if active is None or not active.cancel_requested:
                self.stats["interrupted"] += 1
                raise  # shutdown: the engine has already reported the run Crashed
            # The engine reports a cancelled task as Crashed (forced over
            # Cancelling); put the run where the user asked it to go.
            async with AsyncClientContext.get_or_create() as ctx:
                await ctx.client.set_flow_run_state(
                    fr.id, Cancelled(message="Cancelled on request."), force=True
                )
            self.stats["cancelled"] += 1
            return
        except Exception:
            logger.exception("flow run %s: the engine failed", fr.id)
            self.stats["failed"] += 1
            return
        self.stats["completed" if state.is_completed() else "failed"] += 1

    async def _watch_cancellations(self, client: PrefectClient) -> None:
        # Cancelling from the UI or CLI only sets a state; a runner would then
        # kill the run's process, so in-process we must cancel the task ourselves.
        active = {a.flow_run_id: a for a in self._active.values() if not a.cancel_requested}
        if not active:
            return
        wanted = [StateType.CANCELLING, StateType.CANCELLED]
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=list(active)),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=wanted)),
            )
        )
        for fr in runs:
            logger.info("flow run %s is %s: cancelling it", fr.id, fr.state_type)
            active[fr.id].cancel_requested = True
            active[fr.id].task.cancel()

    async def _drain(self) -> None:
        tasks = [a.task for a in self._active.values()]
        if not tasks:
            return
        logger.info("waiting up to %.0f s for %d flow run(s)", self._shutdown_timeout, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=self._shutdown_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)
