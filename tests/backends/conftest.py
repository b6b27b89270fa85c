"""Fixtures for the backend tests: a scripted chat-completions server per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from http_fixtures import ScriptedServer, serve


@pytest.fixture
def chat_server() -> Iterator[ScriptedServer]:
    """A running :class:`~http_fixtures.ScriptedServer` on 127.0.0.1."""
    with serve() as server:
        yield server
