"""What ``granian sse_fast.app:app`` and ``sse-fast serve`` run: the server with the demo task handlers.

Settings come from the environment (``SSE_FAST_*``) and are validated here, at import. Programs that embed
sse-fast build their own with :func:`sse_fast.create_app` and a :class:`sse_fast.Scheduler` of their handlers.
"""

from sse_fast import demo
from sse_fast.server.app import App, create_app

__all__ = ["app"]

app: App = create_app(scheduler=demo.scheduler())
