"""The HTTP face of the scheduler: ``POST /api/commands`` and ``/api/tasks``.

Until a scheduler is configured, commands are answered ``503 scheduler_unavailable``.
"""

from __future__ import annotations

from sse_fast._http import HttpError, Response, Route
from sse_fast.auth import Identity
from sse_fast.models import Envelope

__all__ = ["CommandService"]


class CommandService:
    """Routes commands and task requests to the scheduler."""

    def routes(self) -> list[Route]:
        """The ``/api/tasks`` endpoints."""
        return []

    async def submit(self, caller: Identity, envelope: Envelope) -> Response:
        """Handle a command envelope sent by ``caller``."""
        raise HttpError(503, "scheduler_unavailable", "no scheduler is configured on this server")
