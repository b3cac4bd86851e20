"""A tiny model behind the OpenAI API (tests/chat_app.py) on loopback, with injected faults and a
request log, for the feedback stage's tests.

    python tests/fault_server.py --model PATH --port N --log requests.jsonl \
        [--faults '{"2": "500", "3": "timeout", "4": "truncated", "5": "malformed"}'] [--delay 0.1]

Faults are keyed by the 1-based number of the chat request: ``500`` answers HTTP 500,
``timeout`` stalls past any client timeout before answering, ``truncated`` sends the first half
of a real reply's body, ``malformed`` sends a 200 that is not a chat completion. Every request is
logged as it arrives (with a SHA-256 of its Authorization header, never the header) and again
with its outcome once answered, so a test can tell which requests the server finished.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chat_app import create_app  # noqa: E402


class FaultsAndLog:
    """Pure ASGI middleware: count chat requests, inject the planned fault, log each outcome."""

    def __init__(self, app, faults: dict[int, str], log_path: Path, delay_s: float, stall_s: float):
        self.app, self.faults, self.log_path = app, faults, log_path
        self.delay_s, self.stall_s = delay_s, stall_s
        self.count = 0
        self.lock = threading.Lock()

    def _log(self, record: dict) -> None:
        with self.lock, self.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            return await self.app(scope, receive, send)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.count += 1
        n, fault = self.count, self.faults.get(self.count, "")
        request = json.loads(body)
        auth = dict(scope["headers"]).get(b"authorization", b"")
        self._log({"n": n, "event": "received", "fault": fault, "request": request,
                   "auth_sha256": hashlib.sha256(auth).hexdigest() if auth else None})
        await asyncio.sleep(self.delay_s)
        if fault == "500":
            await _respond(send, 500, b'{"error": "injected"}')
        elif fault == "malformed":
            await _respond(send, 200, b'{"object": "chat.completion", "choices": []}')
        else:
            if fault == "timeout":
                await asyncio.sleep(self.stall_s)
            status, payload = await _call(self.app, scope, body)
            if fault == "truncated":
                payload = payload[: len(payload) // 2]
            try:
                await _respond(send, status, payload)
            except OSError:  # the client gave up (timeout): nothing was delivered
                fault = fault or "client-gone"
        self._log({"n": n, "event": "answered", "fault": fault, "request": request})


async def _call(app, scope, body: bytes) -> tuple[int, bytes]:
    """Run the wrapped app on a buffered request; return its status and full body."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def capture(message):
        sent.append(message)

    await app(scope, receive, capture)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def _respond(send, status: int, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--faults", default="{}")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--stall", type=float, default=5.0)
    args = parser.parse_args()
    faults = {int(k): v for k, v in json.loads(args.faults).items()}
    app = FaultsAndLog(create_app(args.model, "tiny"), faults, args.log, args.delay, args.stall)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
