"""loadtests/client.py: lanes keep one connection per request in flight, reused; the jobs API calls
send what the openai SDK sent and raise on HTTP errors."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from loadtests.client import Lanes, request_json, upload_file


async def serve(delay: float, connections: list[int]) -> asyncio.Server:
    """A keep-alive HTTP/1.1 server on loopback that answers every request "ok" after ``delay``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = content_length(head)
                await reader.readexactly(length)
                await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-seen: yes\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def content_length(head: bytes) -> int:
    for line in head.decode().split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            return int(value)
    return 0


def test_lanes_one_connection_per_request_in_flight_and_reused() -> None:
    async def scenario() -> tuple[int, int, list[int]]:
        connections: list[int] = []
        server = await serve(0.05, connections)
        port = server.sockets[0].getsockname()[1]
        try:
            async with Lanes(base_url=f"http://127.0.0.1:{port}", timeout=10) as lanes:
                at_once = await asyncio.gather(*(lanes.post("/x", json={"i": i}) for i in range(5)))
                assert all(r.status_code == 200 and r.text == "ok" for r in at_once)
                made = len(lanes)
                for _ in range(10):  # one at a time: an idle lane, its connection kept alive
                    response = await lanes.post("/x", json={})
                    assert response.headers["x-seen"] == "yes"
                return made, len(lanes), connections
        finally:
            server.close()
            await server.wait_closed()

    made, after, connections = asyncio.run(scenario())
    assert made == after == 5
    assert len(connections) == 5


def test_jobs_api_calls() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/files":
            return httpx.Response(200, json={"id": "file-1"})
        if request.url.path == "/v1/batches/missing":
            return httpx.Response(404, json={"error": {"message": "No batch missing."}})
        return httpx.Response(200, json={"echo": json.loads(request.content or b"null")})

    with httpx.Client(base_url="http://gateway", transport=httpx.MockTransport(handler)) as client:
        assert upload_file(client, "bench.jsonl", b'{"a": 1}\n', purpose="batch") == "file-1"
        body = seen[-1].read()
        assert b'name="purpose"\r\n\r\nbatch' in body
        assert b'name="file"; filename="bench.jsonl"' in body and b'{"a": 1}\n' in body
        assert request_json(client, "POST", "/v1/batches", json={"x": 1}) == {"echo": {"x": 1}}
        with pytest.raises(httpx.HTTPStatusError, match=r"404.*No batch missing"):
            request_json(client, "GET", "/v1/batches/missing")
