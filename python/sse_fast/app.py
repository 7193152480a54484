"""What ``granian sse_fast.app:app`` and ``sse-fast serve`` run: the server with the demo task handlers.

Settings come from the environment (``SSE_FAST_*``) and are validated here, at import. Logging too: under plain
granian nothing configures sse-fast's loggers, so :func:`sse_fast.logs.install` gives them a handler in
``SSE_FAST_LOG_FORMAT`` unless the host configured logging itself. Programs that embed sse-fast build their own
with :func:`sse_fast.create_app` and a :class:`sse_fast.Scheduler` of their handlers.
"""

from sse_fast import demo, logs
from sse_fast.server.app import App, create_app
from sse_fast.settings import Settings

__all__ = ["app"]

_settings = Settings.from_env()
logs.install(_settings.log_level, _settings.log_format)
app: App = create_app(_settings, scheduler=demo.scheduler())
