"""Import sse-fast's pure-Python modules (settings, models, auth) whether or not the Rust extension is built.

``sse_fast/__init__.py`` imports the compiled ``sse_fast._core``. Where it is not built (a fresh checkout, a
worktree that only touches Python), :func:`load` registers ``sse_fast`` as a bare package over ``python/sse_fast``
without running its ``__init__``, so that these modules, which never import ``_core``, can still be tested.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent / "python" / "sse_fast"


def load(name: str) -> types.ModuleType:
    """``sse_fast.<name>``, imported without the compiled extension if it is missing."""
    try:
        import sse_fast  # noqa: F401
    except ImportError:
        bare = types.ModuleType("sse_fast")
        bare.__path__ = [str(_PACKAGE)]
        sys.modules["sse_fast"] = bare
    return importlib.import_module(f"sse_fast.{name}")
