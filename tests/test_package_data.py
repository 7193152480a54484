"""The browser files the server serves from inside the package (``sse_fast/static``: the SDK and the admin page) are
package data that a wheel ships: present where ``importlib.resources`` finds them, under maturin's python-source,
not excluded by ``[tool.maturin]``, not git-ignored (maturin leaves ignored files out of a wheel), and complete (every
file the admin page loads is there). A cheap check of the declarations; tests/test_wheel.py installs a real wheel.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import tomllib
from importlib import resources

import pytest

from _servers import ROOT

STATIC = ("sse-fast.js", "admin.html", "admin.js", "admin.css")


def _maturin() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        maturin: dict[str, object] = tomllib.load(f)["tool"]["maturin"]
    return maturin


@pytest.mark.parametrize("name", STATIC)
def test_the_static_file_is_a_resource_of_the_package(name: str) -> None:
    resource = resources.files("sse_fast") / "static" / name
    assert resource.is_file()
    assert len(resource.read_bytes()) > 100


def test_the_static_files_are_under_the_python_source_maturin_packs() -> None:
    maturin = _maturin()
    source = ROOT / str(maturin["python-source"])
    assert str(maturin["module-name"]).startswith("sse_fast.")  # the extension lives inside the sse_fast package
    for name in STATIC:
        assert (source / "sse_fast" / "static" / name).is_file(), name


def test_no_maturin_exclude_pattern_drops_a_static_file() -> None:
    excludes = _maturin().get("exclude", [])
    assert isinstance(excludes, list)
    patterns = [e if isinstance(e, str) else str(e["path"]) for e in excludes]
    for name in STATIC:
        for path in (f"sse_fast/static/{name}", f"python/sse_fast/static/{name}"):
            hits = [p for p in patterns if fnmatch.fnmatch(path, p)]
            assert not hits, f"{path} is excluded by {hits}"


def test_the_static_files_are_not_git_ignored() -> None:
    git = shutil.which("git")
    assert git, "git is needed to check the ignore rules"
    paths = [f"python/sse_fast/static/{name}" for name in STATIC]
    ignored = subprocess.run([git, "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True, check=False)
    assert ignored.returncode == 1, f"git-ignored (maturin leaves them out of the wheel): {ignored.stdout}"


def test_every_file_the_admin_page_loads_is_packaged() -> None:
    html = (resources.files("sse_fast") / "static" / "admin.html").read_text()
    loaded = re.findall(r'(?:src|href)="/admin/([^"]+)"', html)
    assert sorted(loaded) == ["admin.css", "admin.js"]
    for name in loaded:
        assert name in STATIC
    assert 'from "/sdk/sse-fast.js"' in (resources.files("sse_fast") / "static" / "admin.js").read_text()
