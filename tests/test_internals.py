"""The libraries' internals pkrelay relies on, each pinned to its minor in pyproject.toml.

A new minor of arq, uvicorn, anyio or redis may change what these assert without a
word in its changelog: this test fails first, and its message names the pkrelay file
that relies on it. Move a pin only with this test green (and adapt that file when it
is not).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import arq.constants
import arq.jobs
import arq.worker
import pytest
import redis.asyncio.connection
import uvicorn
from arq import func
from arq.connections import RedisSettings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from pkrelay import queue
from receiver.relay import may_have_run

QUEUE = "pkrelay/queue.py"
WORKER = "workers/settings.py"
SERVER = "receiver/server.py"
RELAY = "receiver/relay.py"
CLIENT = "pkrelay/pluralkit/client.py"


def params(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def source(function: Callable[..., Any]) -> str:
    return inspect.getsource(function)


# arq: the Redis key layout, written by pkrelay/queue.py's Lua scripts ------------------

@pytest.mark.parametrize(("name", "value"), [
    ("default_queue_name", "arq:queue"),
    ("job_key_prefix", "arq:job:"),
    ("in_progress_key_prefix", "arq:in-progress:"),
    ("result_key_prefix", "arq:result:"),
    ("retry_key_prefix", "arq:retry:"),
])
def test_arq_key_layout(name: str, value: str) -> None:
    assert getattr(arq.constants, name, None) == value, (
        f"arq.constants.{name} is no longer {value!r}: {QUEUE}'s Lua scripts write and read arq's keys "
        f"themselves (the queue's sorted set, job, in-progress and result keys; release() leaves a taken job's "
        f"try count under arq:retry:), and {WORKER} deletes in-progress keys")


def test_arq_job_serialization() -> None:
    assert params(arq.jobs.serialize_job)[:5] == ["function_name", "args", "kwargs", "job_try", "enqueue_time_ms"], (
        f"arq.jobs.serialize_job's arguments changed: {QUEUE} serializes the jobs its Lua scripts write")
    payload = arq.jobs.serialize_job(queue.INGEST_JOB, (b"x",), {}, None, 1234)
    assert arq.jobs.deserialize_job_raw(payload) == (queue.INGEST_JOB, (b"x",), {}, None, 1234), (
        f"arq no longer reads back the job key {QUEUE} writes")


def test_arq_worker_reads_the_queue_and_in_progress_keys_as_queue_py_writes_them() -> None:
    assert inspect.signature(arq.worker.Worker).parameters["queue_name"].default == arq.constants.default_queue_name, (
        f"arq's worker no longer reads arq:queue by default, the sorted set {QUEUE} enqueues into")
    start = source(arq.worker.Worker.start_jobs)
    # take_over() and logged() mark jobs in progress so a worker skips them, and fail the
    # WATCH of one starting a job at that very moment; enqueue_unique() scores by due time.
    for needle in ("in_progress_key_prefix + job_id", "pipe.watch(in_progress_key)", "pipe.exists(in_progress_key)",
                   "pipe.zscore(self.queue_name, job_id)", "score > timestamp_ms()", "WatchError"):
        assert needle in start, (
            f"arq's Worker.start_jobs no longer has {needle!r}: {QUEUE}'s take_over/logged/enqueue_unique rely on "
            f"a worker skipping a job with an in-progress key, and watching that key while it starts one")


async def test_arq_in_progress_timeout_is_job_timeout_plus_10s() -> None:
    async def job(ctx: dict[str, Any]) -> None: ...

    worker = arq.worker.Worker(functions=[func(job, name="job")], job_timeout=queue.JOB_TIMEOUT_S,
                               redis_settings=RedisSettings(), handle_signals=False)
    assert worker.in_progress_timeout_s * 1000 == queue.IN_PROGRESS_MS, (
        f"arq no longer marks a started job in progress for job_timeout + 10 s: {QUEUE}'s IN_PROGRESS_MS "
        f"(the mark take_over() sets) copies it")


# arq: the worker subclass in workers/settings.py ---------------------------------------

@pytest.mark.parametrize(("method", "expected"), [
    ("main", ["self"]),
    ("start_jobs", ["self", "job_ids"]),
    ("run_job", ["self", "job_id", "score"]),
    ("_poll_iteration", ["self"]),
    ("close", ["self"]),
])
def test_arq_worker_methods_overridden(method: str, expected: list[str]) -> None:
    function = getattr(arq.worker.Worker, method, None)
    assert function is not None, f"arq.worker.Worker.{method} is gone: {WORKER}'s Worker overrides it"
    assert inspect.iscoroutinefunction(function), f"arq.worker.Worker.{method} is no longer async ({WORKER})"
    assert params(function) == expected, (
        f"arq.worker.Worker.{method}{inspect.signature(function)} changed: {WORKER}'s Worker overrides it "
        f"and calls super().{method}({', '.join(expected[1:])})")


async def test_arq_worker_attributes_relied_on() -> None:
    async def job(ctx: dict[str, Any]) -> None: ...

    worker = arq.worker.Worker(functions=[func(job, name="job")], redis_settings=RedisSettings(),
                               handle_signals=False, max_jobs=3)
    assert isinstance(getattr(worker, "sem", None), asyncio.BoundedSemaphore), (
        f"arq's Worker.sem (the job slots' semaphore) is gone: {WORKER}'s start_jobs gives back the slot arq took")
    assert getattr(worker, "job_counter", None) == 0, (
        f"arq's Worker.job_counter is gone: {WORKER}'s start_jobs decrements it with the slot it gives back")
    assert getattr(worker, "tasks", None) == {}, (
        f"arq's Worker.tasks (job id -> task) is gone: {WORKER}'s main and _poll_iteration read it")
    assert isinstance(getattr(worker, "ctx", None), dict) and hasattr(worker, "on_shutdown"), (
        f"arq's Worker.ctx / on_shutdown are gone: {WORKER}'s close calls on_shutdown(ctx) itself")
    assert isinstance(inspect.getattr_static(arq.worker.Worker, "pool", None), property), (
        f"arq's Worker.pool is gone: {WORKER}'s _poll_iteration deletes in-progress keys through it")


def test_arq_start_jobs_takes_a_slot_before_it_reads_redis() -> None:
    """workers/settings.py undoes that slot when Redis fails: arq must take it the same way."""
    start = source(arq.worker.Worker.start_jobs)
    taken = [start.find("await self.sem.acquire()"), start.find("self.job_counter = self.job_counter + 1")]
    redis_call = start.find("self.pool.pipeline(")
    assert -1 not in taken and redis_call != -1 and max(taken) < redis_call, (
        f"arq's Worker.start_jobs no longer acquires self.sem and increments self.job_counter before its "
        f"Redis calls: {WORKER}'s start_jobs, which gives both back when Redis fails, would leak or double them")
    finished = source(arq.worker.Worker._release_sem_dec_counter_on_complete)
    assert "self.job_counter = self.job_counter - 1" in finished and "self.sem.release()" in finished, (
        f"arq no longer gives a job's slot back with sem.release() and job_counter - 1: {WORKER} does the same")


def test_arq_poll_iteration_starts_jobs_through_start_jobs() -> None:
    assert "await self.start_jobs(job_ids)" in source(arq.worker.Worker._poll_iteration), (
        f"arq's Worker._poll_iteration no longer starts jobs through self.start_jobs: {WORKER}'s overrides of "
        f"both (reconnecting, giving back slots) would no longer run")


def test_arq_redis_settings_take_a_retry() -> None:
    fields = {field.name for field in dataclasses.fields(RedisSettings)}
    assert {"retry", "retry_on_error"} <= fields, (
        f"arq's RedisSettings has no retry / retry_on_error: {WORKER} sets them with dataclasses.replace")


# uvicorn: receiver/server.py subclasses HttpToolsProtocol ------------------------------

@pytest.mark.parametrize(("method", "expected"), [
    ("connection_made", ["self", "transport"]),
    ("connection_lost", ["self", "exc"]),
    ("on_headers_complete", ["self"]),
    ("on_message_complete", ["self"]),
    ("on_response_complete", ["self"]),
])
def test_uvicorn_httptools_methods_overridden(method: str, expected: list[str]) -> None:
    function = HttpToolsProtocol.__dict__.get(method)
    assert function is not None, f"uvicorn's HttpToolsProtocol no longer defines {method}: {SERVER} overrides it"
    assert params(function) == expected, (
        f"uvicorn's HttpToolsProtocol.{method}{inspect.signature(function)} changed: {SERVER}'s "
        f"DeadlineProtocol overrides it and calls super().{method}({', '.join(expected[1:])})")


def test_uvicorn_httptools_calls_on_response_complete_when_a_response_ends() -> None:
    assert "on_response=self.on_response_complete" in source(HttpToolsProtocol.on_headers_complete), (
        f"uvicorn's HttpToolsProtocol no longer hands on_response_complete to each request's cycle: {SERVER} "
        f"arms the next request's read deadline there")


def test_uvicorn_httptools_leaves_the_names_server_py_adds() -> None:
    for name in ("_arm", "_disarm", "_expire", "_deadline"):
        assert not hasattr(HttpToolsProtocol, name), (
            f"uvicorn's HttpToolsProtocol now has {name}: {SERVER}'s DeadlineProtocol defines its own {name}")


async def test_uvicorn_httptools_attributes_relied_on() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    config = uvicorn.Config(app, http="httptools", log_config=None)
    protocol = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={},
                                 _loop=asyncio.get_running_loop())
    assert protocol.loop is asyncio.get_running_loop(), (
        f"uvicorn's HttpToolsProtocol.loop is gone: {SERVER} schedules its read deadline with self.loop")
    assert hasattr(protocol, "pipeline") and not protocol.pipeline, (
        f"uvicorn's HttpToolsProtocol.pipeline (the requests read ahead) is gone: {SERVER} reads it in "
        f"on_response_complete")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: protocol, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if protocol.transport is not None:
                break
            await asyncio.sleep(0.01)
        assert isinstance(protocol.transport, asyncio.Transport), (
            f"uvicorn's HttpToolsProtocol.transport is not the connection's transport: {SERVER} closes it")
        writer.close()
    finally:
        server.close()


def test_uvicorn_config_takes_a_protocol_class() -> None:
    wanted = {"http", "access_log", "log_config", "server_header", "timeout_graceful_shutdown",
              "timeout_keep_alive"}
    assert wanted <= set(params(uvicorn.Config.__init__)), f"uvicorn.Config lost an argument {SERVER} passes"


# anyio: pkrelay/pluralkit/client.py imports its asyncio backend ahead ------------------

def test_anyio_asyncio_backend_imports() -> None:
    import anyio._backends._asyncio as backend

    assert hasattr(backend, "backend_class"), (
        f"anyio._backends._asyncio is no longer anyio's asyncio backend: {CLIENT} imports it ahead of httpx's "
        f"first request")


# redis: receiver/relay.py tells a failed connect from a lost request by the message ------
# (both are redis.exceptions.ConnectionError, or TimeoutError, raised with the same
# types by redis-py 5.3; only their text says "connecting").

@pytest.fixture
async def free_port() -> AsyncIterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield port


async def test_redis_refused_connect_says_connecting(free_port: int) -> None:
    client = queue.connect(f"redis://127.0.0.1:{free_port}")
    with pytest.raises(RedisConnectionError) as caught:
        await client.ping()
    await client.aclose()
    assert "connecting" in str(caught.value), (
        f"redis-py's refused connect no longer says 'connecting' ({caught.value}): {RELAY}'s may_have_run "
        f"would take it for a lost request and answer 'unconfirmed' where nothing was sent")
    assert not may_have_run(caught.value)


async def test_redis_connect_timeout_says_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    async def times_out(self: object) -> None:
        raise TimeoutError

    monkeypatch.setattr(redis.asyncio.connection.Connection, "_connect", times_out)
    client = queue.connect("redis://127.0.0.1:6379")
    with pytest.raises(RedisTimeoutError) as caught:
        await client.ping()
    await client.aclose()
    assert "connecting" in str(caught.value), (
        f"redis-py's connect timeout no longer says 'connecting' ({caught.value}): {RELAY}'s may_have_run")
    assert not may_have_run(caught.value)


async def test_redis_lost_request_does_not_say_connecting() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)  # the request arrived; the answer never leaves
        writer.transport.abort()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    client = queue.connect(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        with pytest.raises(RedisConnectionError) as caught:
            await client.ping()
    finally:
        await client.aclose()
        server.close()
    assert "connecting" not in str(caught.value), (
        f"redis-py's error for a request lost mid-way now says 'connecting' ({caught.value}): {RELAY}'s "
        f"may_have_run would say it cannot have run")
    assert may_have_run(caught.value)


def test_redis_error_reply_and_watch_types() -> None:
    assert issubclass(ResponseError, redis.exceptions.RedisError), f"{RELAY} catches RedisError, then ResponseError"
    assert issubclass(WatchError, redis.exceptions.RedisError), f"{WORKER}'s LOST_REDIS includes WatchError"
