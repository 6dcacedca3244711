"""Serve a folder over HTTP on 127.0.0.1 for rehearsal downloads.

``with serve(folder) as base_url:`` starts ``http.server`` on a port the OS picks (port 0, so
parallel test sessions never collide), in a daemon thread, and yields ``http://127.0.0.1:PORT``.
Request logs are dropped (they would flood pytest's captured output); on exit the server stops
accepting, its socket closes and the thread is joined.

The standard handler ignores ``Range`` headers and answers 200 with the whole file, which
``offshelf.checkpoints.download`` handles (it restarts the ``.part``), so resumption is exercised
against a server that cannot resume, as some mirrors do.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from collections.abc import Iterator


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@contextlib.contextmanager
def serve(folder: str | os.PathLike) -> Iterator[str]:
    """Serve ``folder`` read-only; yields the base URL (no trailing slash)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot serve {folder}: not a folder")
    handler = functools.partial(_QuietHandler, directory=folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # a stuck client never blocks shutdown
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"rehearsal-http-{server.server_port}", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


if __name__ == "__main__":  # python tests/rehearsal/server.py FOLDER: serve until Ctrl-C
    import sys
    import time

    with serve(sys.argv[1] if len(sys.argv) > 1 else ".") as url:
        print(url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
