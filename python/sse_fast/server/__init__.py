"""The server: the HTTP side of one worker, and what wires every part together.

- :mod:`~sse_fast.server.app`: :class:`App` and :func:`create_app`, which build the broker, the streams, the
  scheduler and the routes of one worker;
- :mod:`~sse_fast.server.rsgi` and :mod:`~sse_fast.server.asgi`: the two granian interfaces, twins of one shape;
- :mod:`~sse_fast.server.http`: requests, responses and the route table, whatever the interface;
- :mod:`~sse_fast.server.routes`: the endpoints of PROTOCOL.md sections 2, 3, 5 and 6;
- :mod:`~sse_fast.server.handshake`: opening a stream (the connect frame, resume, mailbox, watermark, replay);
- :mod:`~sse_fast.server.commands`: commands and task endpoints (section 4);
- :mod:`~sse_fast.server.auth`: who a caller is and what it may do (section 6);
- :mod:`~sse_fast.server.metrics` and :mod:`~sse_fast.server.backlog`: ``/metrics``, and RSGI's slow readers.
"""

from __future__ import annotations

from sse_fast.server.app import App, create_app

__all__ = ["App", "create_app"]
