"""Available memory inside a real memory-limited cgroup that holds page cache.

The kernel charges a cgroup for the page cache of the files its processes write and lets
that cache grow up to the limit before reclaiming it. A build that writes a lot (every
compile does) therefore sits close to its limit while most of it is free on demand; a
watchdog that took ``limit - usage`` for free memory would stop healthy builds. Here a real
child in a real cgroup writes a file, then asks ``probe.read_memory`` what it may allocate.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixbuild import probe

MiB = 1024**2
LIMIT = 768 * MiB
WRITTEN = 400 * MiB

# Runs inside the cgroup: writes WRITTEN bytes of page cache and reads them back twice (as a
# link step reads object files; the kernel then moves the pages to its active list), then
# reports what the kernel counts as used and what probe says is available.
CHILD = """
import json, os, sys
from nixbuild import probe
cgroup, limit_file, usage_file, path, size = sys.argv[1:6]
with open(path, "wb") as f:
    block = os.urandom(1024 * 1024)
    for _ in range(int(size) // len(block)):
        f.write(block)
    f.flush()
    os.fsync(f.fileno())  # clean pages: dirty ones are rightly counted as used
for _ in range(2):
    with open(path, "rb") as f:
        while f.read(1024 * 1024):
            pass
usage = int(open(os.path.join(cgroup, usage_file)).read())
limit = int(open(os.path.join(cgroup, limit_file)).read())
print(json.dumps({"limit": limit, "usage": usage,
                  "available": probe.read_memory().available_bytes}))
"""


def _unusable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must be able to create a memory cgroup: {reason}")
    pytest.skip(reason)


@pytest.fixture
def memory_cgroup() -> Iterator[tuple[Path, str, str]]:
    """A fresh memory cgroup limited to LIMIT: (dir, limit file, usage file)."""
    dirs = probe.cgroup_dirs()
    if dirs is None or not dirs.memory:
        _unusable("no memory cgroup on this machine")
    assert dirs is not None
    if dirs.version == 1:
        # v1: any cgroup may have children; ours keeps the test's own charges apart.
        parent, files = Path(dirs.memory[0]), ("memory.limit_in_bytes", "memory.usage_in_bytes")
    else:
        # v2: only the root may hold processes and controlled children at once.
        parent, files = Path(dirs.memory[-1]), ("memory.max", "memory.current")
        controllers = (parent / "cgroup.subtree_control").read_text().split()
        if "memory" not in controllers:
            _unusable(f"the memory controller is not enabled in {parent}")
    cgroup = parent / f"nixbuild-test-{uuid.uuid4().hex[:8]}"
    try:
        cgroup.mkdir()
        (cgroup / files[0]).write_text(str(LIMIT))
    except OSError as err:
        _unusable(f"cannot create a memory cgroup under {parent}: {err}")
    try:
        yield cgroup, *files
    finally:
        with contextlib.suppress(OSError):
            cgroup.rmdir()


@pytest.fixture
def disk_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a disk file system: tmpfs pages are shared memory, not page cache."""
    fs_type = subprocess.run(
        ["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    if fs_type != "tmpfs":
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as repo_dir:  # the clone's disk
        yield Path(repo_dir)


def test_page_cache_is_not_taken_for_used_memory(
    memory_cgroup: tuple[Path, str, str], disk_dir: Path
) -> None:
    cgroup, limit_file, usage_file = memory_cgroup
    data = disk_dir / "written.bin"

    def enter() -> None:
        (cgroup / "cgroup.procs").write_text("0")

    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(cgroup), limit_file, usage_file, str(data), str(WRITTEN)],
        preexec_fn=enter,  # it only writes cgroup.procs
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    data.unlink(missing_ok=True)  # drops the cache, so the cgroup can go
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["limit"] == LIMIT
    # The kernel really charged the written file to the cgroup: limit - usage is small ...
    assert seen["limit"] - seen["usage"] < LIMIT - WRITTEN + 64 * MiB, seen
    # ... but what the child may still allocate counts the cache as free.
    assert seen["available"] > LIMIT - 128 * MiB, seen
