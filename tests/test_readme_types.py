"""Every ```python block of README.md type-checks with ``mypy --strict`` against the installed package."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)

pytestmark = pytest.mark.timeout(180)


def readme_blocks() -> list[str]:
    return BLOCK.findall((ROOT / "README.md").read_text())


def test_the_readme_has_python_examples_for_both_clients() -> None:
    code = "\n".join(readme_blocks())
    assert "SyncClient" in code
    assert "send_command(" in code
    assert "messages()" in code


def test_the_readme_python_examples_pass_mypy_strict(tmp_path: Path) -> None:
    blocks = readme_blocks()
    files = []
    for number, code in enumerate(blocks):
        path = tmp_path / f"readme_{number}.py"
        path.write_text(code)
        files.append(str(path))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file", "/dev/null", *files],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"no issues found in {len(blocks)} source files" in result.stdout
