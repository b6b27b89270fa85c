"""A scriptable OpenAI-style chat-completions server on 127.0.0.1 for the backend tests.

Tests queue :class:`Reply` objects (status, body, headers, delay) or set a function that
builds the reply from the request; the server records every request it receives and the
most requests it has handled at once, so tests can check bodies, headers, retry counts and
concurrency against a real socket. ``conftest.py`` starts one per test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    """What the server answers: a dict body is sent as JSON, str or bytes as they are."""

    status: int = 200
    body: dict | str | bytes = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    """One request as the server received it; header names are case-insensitive."""

    path: str
    headers: Message
    body: dict


def completion(text: str, prompt_tokens: int = 11, completion_tokens: int = 3,
               finish_reason: str = "stop") -> dict:
    """A chat-completions response body in the OpenAI shape."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class ScriptedServer:
    """The state a test scripts and inspects; the HTTP handler reads and writes it."""

    def __init__(self) -> None:
        self.base_url = ""
        self.requests: list[Seen] = []
        self.peak_in_flight = 0
        self._in_flight = 0
        self._queue: list[Reply] = []
        self._responder: Callable[[dict], Reply] | None = None
        self._lock = threading.Lock()

    def queue(self, *replies: Reply) -> None:
        """Answers requests with these replies in turn; the last one repeats."""
        self._queue = list(replies)
        self._responder = None

    def respond_with(self, responder: Callable[[dict], Reply]) -> None:
        """Answers each request with ``responder(request_body)``."""
        self._responder = responder

    def next_reply(self, body: dict) -> Reply:
        with self._lock:
            if self._responder is not None:
                return self._responder(body)
            if not self._queue:
                return Reply(body=completion("default answer"))
            return self._queue.pop(0) if len(self._queue) > 1 else self._queue[0]

    def enter(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


def _handler_for(state: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the name http.server dispatches to)
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.loads(raw) if raw else {}
            state.enter(Seen(self.path, self.headers, body))
            left = False
            try:
                reply = state.next_reply(body)
                if reply.delay:  # no sleep call at all otherwise, for tests that patch sleep
                    time.sleep(reply.delay)
                # Out of flight before the reply goes out: once the client has it, it may send
                # its next request before this thread would have got to count this one done.
                state.leave()
                left = True
                self._answer(reply)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timed out) before the reply was written
            finally:
                if not left:
                    state.leave()

        def _answer(self, reply: Reply) -> None:
            if isinstance(reply.body, dict):
                payload = json.dumps(reply.body).encode()
            elif isinstance(reply.body, str):
                payload = reply.body.encode()
            else:
                payload = reply.body
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    return Handler


@contextmanager
def serve() -> Iterator[ScriptedServer]:
    """Runs a scripted server in a background thread; ``base_url`` ends in ``/v1``."""
    state = ScriptedServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(state))
    # Handlers still sleeping for a client that timed out must not hold up shutdown.
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
