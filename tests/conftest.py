"""Shared fixtures. Anything that starts a process lives in tests/_servers.py."""

import sys
from pathlib import Path

# tests/reference is imported as `reference` by the property tests.
sys.path.insert(0, str(Path(__file__).parent))
