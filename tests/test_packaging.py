"""What an install is made of: the lock, the extras, the version, the licence, the types."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def requirement_name(requirement: str) -> str:
    """The normalized distribution name of a PEP 508 requirement."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match[0]).lower()


def test_the_lock_pins_every_requirement_with_hashes() -> None:
    """requirements.lock pins each dependency of every extra (== and a sha256): an upstream
    release cannot change a build."""
    # Given
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {requirement_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {requirement_name(r) for r in extra}
    wanted.discard(project["name"])
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    # When
    pinned = {requirement_name(m[1]) for m in re.finditer(r"(?m)^([A-Za-z0-9][^=\s]*)==", lock)}
    entries = re.split(r"(?m)^(?=[A-Za-z0-9])", lock)
    # Then
    assert wanted <= pinned, wanted - pinned
    assert all("--hash=sha256:" in entry for entry in entries if "==" in entry)


def test_the_producers_install_needs_neither_the_worker_nor_its_extras() -> None:
    """The base install is dramatiq and redis-py; the worker's packages are its extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    base = {requirement_name(r) for r in project["dependencies"]}
    assert base == {"dramatiq", "redis"}
    worker = {requirement_name(r) for r in project["optional-dependencies"]["worker"]}
    assert {"structlog", "prometheus-client", "rich", "gunicorn", "requests"} <= worker


def test_tagsync_version_is_the_installed_release() -> None:
    """`tagsync --version` prints the version the package metadata holds."""
    result = subprocess.run(
        [sys.executable, "-m", "worker", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"tagsync {metadata.version('wechat-tagsync')}"


def test_licence_and_type_markers_ship() -> None:
    """LICENSE is the project's licence file, and each package carries py.typed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["*"]
    for package in ("producers", "worker", "fakewechat"):
        assert (ROOT / package / "py.typed").is_file(), package
