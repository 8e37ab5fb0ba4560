"""The site's WSGI application alone behind a real socket in a thread, for tests that must
send requests exactly as written (no test-client normalisation).

Not pytest-django's `live_server`: that one also serves MEDIA_ROOT and static files by itself,
which no deployment does, and its autouse helper sets up the transactional database before any
fixture of the test, so nothing could run after its flush.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections
from django.test.testcases import LiveServerThread


@contextmanager
def site_server() -> Iterator[int]:
    """Serve the site on 127.0.0.1 and yield the port (needs a transactional database)."""
    # An in-memory SQLite database exists once per connection: the thread shares this one.
    shared = {c.alias: c for c in connections.all() if c.vendor == "sqlite" and c.is_in_memory_db()}
    for conn in shared.values():
        conn.inc_thread_sharing()
    # `static_handler` gets the media-serving wrapper; unwrapping it leaves the site alone.
    thread = LiveServerThread(
        "127.0.0.1", static_handler=lambda media: media.application, connections_override=shared
    )
    thread.daemon = True
    thread.start()
    thread.is_ready.wait()
    if thread.error:
        raise thread.error
    try:
        yield thread.port
    finally:
        thread.terminate()
        # Request threads of kept-alive connections end when the client's sockets close, which
        # happens when their HTTP sessions are collected; they must finish before the shared
        # connection stops being shared, or their closing of it raises.
        gc.collect()
        for other in threading.enumerate():
            if other is not threading.current_thread() and "process_request" in other.name:
                other.join(timeout=30)
        for conn in shared.values():
            conn.dec_thread_sharing()
