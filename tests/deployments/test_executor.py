"""The in-process executor and the local server, against a real Prefect server.

The server is started once for the module on a free port in a temporary
state dir; the tests run in file order, the last one restarts it.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import itertools
import os
import signal
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
from prefect.states import Cancelling, Pending, Running
from prefect.utilities.engine import propose_state

from tidemill.deployments.apply import ensure_deployment
from tidemill.deployments.executor import InProcessExecutor
from tidemill.deployments.stack.prefect_server import is_healthy, start_server, stop_server

pytestmark = pytest.mark.slow

# (pid, parameter, start, end) of every execution of `tick`, kept across runs
# because the runs execute in this process.
TICKS: list[tuple[int, int, float, float]] = []


@flow(name="tidemill-test-tick")
async def tick(n: int = 0) -> int:
    start = time.monotonic()
    await asyncio.sleep(0.05)
    TICKS.append((os.getpid(), n, start, time.monotonic()))
    return n


@flow(name="tidemill-test-sleeper")
async def sleeper(seconds: float = 30.0) -> None:
    await asyncio.sleep(seconds)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    state_dir = tmp_path_factory.mktemp("state")
    port = _free_port()
    started = time.monotonic()
    start_server(state_dir, port)
    print(f"\nserver start: {time.monotonic() - started:.1f} s")
    settings: dict[Any, Any] = {
        PREFECT_API_URL: f"http://127.0.0.1:{port}/api",
        PREFECT_HOME: str(state_dir / "prefect"),
    }
    try:
        with temporary_settings(updates=settings):
            yield state_dir, port
    finally:
        APILogHandler().flush()  # ship queued run logs while the server is still up
        stop_server(state_dir)


async def _runs(deployment_id: UUID) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


async def _execute_until(
    executor: InProcessExecutor, done: Callable[[], bool], seconds: float
) -> None:
    """Run `executor` until `done()` holds or `seconds` have passed, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(executor.run(stop))
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, timeout=10)  # a run that ignored cancelling sleeps 30 s


def test_scheduled_runs_execute_in_this_process_one_at_a_time(server: Any) -> None:
    async def scenario() -> tuple[InProcessExecutor, list[FlowRun], float]:
        deployment_id = await ensure_deployment(
            tick, name="every-2s", interval_seconds=2, parameters={"n": 7}, tags=["test"]
        )
        # Re-applying must not create a second deployment or schedule.
        again = await ensure_deployment(
            tick, name="every-2s", interval_seconds=2, parameters={"n": 7}, tags=["test"]
        )
        assert again == deployment_id
        async with get_client() as client:
            deployment = await client.read_deployment(deployment_id)
        assert len(deployment.schedules) == 1
        assert deployment.work_pool_name is None
        # The scheduler loop runs every 5 s: wait for the first runs to exist.
        for _ in range(40):
            if await _runs(deployment_id):
                break
            await asyncio.sleep(0.25)
        executor = InProcessExecutor({deployment_id: tick}, poll_interval=0.5)
        cpu = time.process_time()
        await _execute_until(executor, lambda: False, 12)
        cpu = time.process_time() - cpu
        return executor, await _runs(deployment_id), cpu

    TICKS.clear()
    executor, runs, cpu = asyncio.run(scenario())
    completed = [r for r in runs if r.state_type == StateType.COMPLETED]
    assert len(completed) >= 3
    assert not [r for r in runs if r.state_type in (StateType.FAILED, StateType.CRASHED)]
    assert executor.stats["failed"] == 0
    assert len(TICKS) == len(completed)
    assert {(pid, n) for pid, n, _, _ in TICKS} == {(os.getpid(), 7)}
    ordered = sorted(TICKS, key=lambda t: t[2])
    assert all(prev[3] <= nxt[2] for prev, nxt in itertools.pairwise(ordered))

    lateness = sorted(
        (r.start_time - r.expected_start_time).total_seconds()
        for r in completed
        if r.start_time and r.expected_start_time
    )
    p95 = lateness[min(len(lateness) - 1, round(0.95 * (len(lateness) - 1)))]
    print(
        f"\n{len(completed)} runs, executor CPU {cpu / len(completed):.3f} s/run, "
        f"lateness p50 {statistics.median(lateness):.2f} s p95 {p95:.2f} s, "
        f"stats {dict(executor.stats)}"
    )


def test_runs_left_running_by_a_killed_executor_are_crashed(server: Any) -> None:
    async def scenario() -> tuple[FlowRun, FlowRun]:
        deployment_id = await ensure_deployment(
            tick, name="leftover", interval_seconds=3600, parameters={"n": 1}, tags=[], paused=True
        )
        async with get_client() as client:
            # What a SIGKILLed executor leaves: a claimed run (holding the
            # deployment's only concurrency slot) stuck in Running.
            stuck = await client.create_flow_run_from_deployment(deployment_id)
            assert (await propose_state(client, Pending(), flow_run_id=stuck.id)).is_pending()
            assert (await propose_state(client, Running(), flow_run_id=stuck.id)).is_running()
            fresh = await client.create_flow_run_from_deployment(deployment_id)
            executor = InProcessExecutor({deployment_id: tick})
            await _execute_until(executor, lambda: executor.stats["completed"] > 0, 10)
            return await client.read_flow_run(stuck.id), await client.read_flow_run(fresh.id)

    stuck, fresh = asyncio.run(scenario())
    assert stuck.state_type == StateType.CRASHED
    # The crashed run released the slot, so the next run could be claimed.
    assert fresh.state_type == StateType.COMPLETED


def test_auto_scheduled_runs_far_past_due_are_skipped(server: Any) -> None:
    async def scenario() -> tuple[InProcessExecutor, list[FlowRun]]:
        deployment_id = await ensure_deployment(
            tick, name="backlog", interval_seconds=10, parameters={"n": 2}, tags=[], paused=True
        )
        # What piles up while no executor runs: auto-scheduled runs long past due.
        now = dt.datetime.now(dt.UTC)
        async with get_client() as client:
            await client.request(
                "POST",
                "/deployments/{id}/schedule",
                path_params={"id": deployment_id},
                json={
                    "start_time": (now - dt.timedelta(seconds=95)).isoformat(),
                    "end_time": (now - dt.timedelta(seconds=70)).isoformat(),
                },
            )
        executor = InProcessExecutor({deployment_id: tick}, max_lateness=60)
        await _execute_until(executor, lambda: executor.stats["skipped_late"] >= 3, 10)
        return executor, await _runs(deployment_id)

    executor, runs = asyncio.run(scenario())
    assert len(runs) == 3
    assert all(r.auto_scheduled for r in runs)
    assert {r.state_type for r in runs} == {StateType.CANCELLED}
    assert all(r.state and "past due" in (r.state.message or "") for r in runs)
    assert executor.stats["claimed"] == 0


def test_cancelling_a_run_cancels_its_task(server: Any) -> None:
    async def scenario() -> FlowRun:
        deployment_id = await ensure_deployment(
            sleeper, name="cancel-me", interval_seconds=3600, parameters={}, tags=[], paused=True
        )
        executor = InProcessExecutor({deployment_id: sleeper})
        async with get_client() as client:
            run = await client.create_flow_run_from_deployment(deployment_id)

            async def cancel_once_running() -> None:
                while (await client.read_flow_run(run.id)).state_type != StateType.RUNNING:
                    await asyncio.sleep(0.1)
                await client.set_flow_run_state(run.id, Cancelling())

            canceller = asyncio.create_task(cancel_once_running())
            await _execute_until(executor, lambda: executor.stats["cancelled"] > 0, 15)
            await canceller
            assert executor.stats["cancelled"] == 1
            return await client.read_flow_run(run.id)

    run = asyncio.run(scenario())
    assert run.state_type == StateType.CANCELLED


def _serve_and_signal(seconds: float, signals: int) -> tuple[FlowRun, float]:
    """Serve one manual run of `sleeper`; SIGTERM this process `signals` times once it runs."""

    async def setup() -> tuple[UUID, UUID]:
        deployment_id = await ensure_deployment(
            sleeper, name="signalled", interval_seconds=3600, parameters={}, tags=[], paused=True
        )
        async with get_client() as client:
            run = await client.create_flow_run_from_deployment(
                deployment_id, parameters={"seconds": seconds}
            )
        return deployment_id, run.id

    async def read(run_id: UUID) -> FlowRun:
        async with get_client() as client:
            return await client.read_flow_run(run_id)

    def send_signals() -> None:
        while asyncio.run(read(run_id)).state_type != StateType.RUNNING:
            time.sleep(0.2)
        for _ in range(signals):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)

    deployment_id, run_id = asyncio.run(setup())
    # The thread needs this context's Prefect settings (temporary_settings).
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(send_signals,), daemon=True).start()
    started = time.monotonic()
    InProcessExecutor({deployment_id: sleeper}).serve()
    return asyncio.run(read(run_id)), time.monotonic() - started


def test_sigterm_lets_the_run_in_flight_finish(server: Any) -> None:
    run, _ = _serve_and_signal(seconds=1.5, signals=1)
    assert run.state_type == StateType.COMPLETED


def test_a_second_sigterm_cancels_the_run_in_flight(server: Any) -> None:
    run, elapsed = _serve_and_signal(seconds=30, signals=2)
    assert run.state_type == StateType.CRASHED
    assert elapsed < 15


def test_server_start_is_idempotent_and_refuses_a_busy_port(server: Any, tmp_path: Path) -> None:
    state_dir, port = server
    pid = start_server(state_dir, port)
    assert start_server(state_dir, port) == pid

    with pytest.raises(RuntimeError, match=f"port {port} is already used by a Prefect server"):
        start_server(tmp_path / "other", port)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {busy} is already used by another process"):
            start_server(tmp_path / "other", busy)

    stale = tmp_path / "stale"
    (stale / "run").mkdir(parents=True)
    (stale / "run" / "prefect-server.pid").write_text(f"{pid + 10_000_000}\n")
    assert stop_server(stale) is False
    assert not (stale / "run" / "prefect-server.pid").exists()

    assert stop_server(state_dir) is True
    assert stop_server(state_dir) is False
    assert not is_healthy(port)
    started = time.monotonic()
    assert start_server(state_dir, port) != pid
    print(f"\nserver restart (migrated db): {time.monotonic() - started:.1f} s")
    assert is_healthy(port)
