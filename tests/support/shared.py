"""Fixtures that pytest-xdist workers build once between them.

A module-scoped fixture runs once per worker, and worksteal can split a module's tests over both
workers: an expensive build (training a draft) would then run twice. `built_once` puts the build in
the session's shared temp folder under a file lock; the second worker waits for it and reuses it.
"""

import os
import shutil

from filelock import FileLock

from hass_sglang.io import read_json, write_json_atomic


def built_once(tmp_path_factory, name: str, build):
    """build(folder) -> a JSON-able value, run once per test session across workers; returns the value."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-<user>/pytest-<n>/: shared by this session's workers
    folder, done = root / name, root / f"{name}.built.json"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed in the other worker
            folder.mkdir()
            write_json_atomic(done, build(folder))
        return read_json(done)
