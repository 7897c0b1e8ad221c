"""Where the project keeps things, and how it writes them: atomically, so a kill never leaves half a file.

Every artifact (converted models, drafts, feature shards, manifests, checkpoints, benchmark
summaries) is written to a temporary sibling and renamed into place; a reader sees the old
version or the new one, never a torn one. Resumable steps also record the settings they run
with (`claim_run_settings`): a re-run with other settings into the same output is refused.
Append-only logs (benchmark records, evaluation journals) are JSONL written one flushed line at a
time (`JsonlWriter`, `read_jsonl`): a kill can only tear the last line, which is dropped.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator


def cache_dir() -> Path:
    """Where converted models and drafts live; override with HASS_CACHE (read at call time)."""
    return Path(os.environ.get("HASS_CACHE", Path.home() / ".cache" / "hass_sglang"))


def models_cache_dir() -> Path:
    return cache_dir() / "models"


def drafts_cache_dir() -> Path:
    """Drafts converted or normalised at launch (`hass_sglang.serving.plan`)."""
    return cache_dir() / "drafts"


# owner/name, as the hub spells repository ids (a local path never reaches here: callers look first)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(ref: str) -> bool:
    return bool(HUB_ID.match(ref)) and not ref.startswith((".", "/", "~"))


def hub_snapshot(repo_id: str, allow_patterns: list[str], error: Callable[[str], Exception]) -> Path:
    """A local snapshot of a hub repository (huggingface_hub's cache: offline with HF_HUB_OFFLINE=1
    when the files are there); `error(message)` when it cannot be had."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as exc:  # offline, missing repo, auth: all end the same way for the user
        raise error(f"could not fetch {repo_id!r} from the hub: {type(exc).__name__}: {exc}") from exc


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_file_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` writes the file at a temporary sibling path, which then replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def write_json_atomic(path: str | Path, obj, indent: int | None = None) -> Path:
    """JSON, gzip-compressed when `path` ends in .gz (mtime 0: the same data gives the same bytes)."""
    text = json.dumps(obj, ensure_ascii=False, indent=indent)
    if Path(path).suffix == ".gz":
        data = gzip.compress(text.encode("utf-8"), mtime=0)
        return write_file_atomic(path, lambda tmp: tmp.write_bytes(data))
    return write_file_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def open_text(path: str | Path):
    """A UTF-8 text reader, decompressing when `path` ends in .gz."""
    path = Path(path)
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def save_torch_atomic(path: str | Path, obj) -> Path:
    import torch

    return write_file_atomic(path, lambda tmp: torch.save(obj, tmp))


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `out_dir` whole (a failure removes it)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: str | Path):
    """The JSON in `path` (gzip-compressed when it ends in .gz), or None when there is no such file."""
    if not Path(path).is_file():
        return None
    with open_text(path) as fh:
        return json.load(fh)


def claim_run_settings(path: str | Path, settings: dict, error: Callable[[str], Exception], write: bool = True) -> None:
    """The one resume rule: an output already holding other settings is refused (`error(message)`),
    else the settings are recorded (unless `write` is False, e.g. on non-zero torchrun ranks)."""
    path = Path(path)
    old = read_json(path)
    if old is not None and old != settings:
        raise error(f"{path.parent} holds a run with a different config ({path.name} records different "
                    "settings); use a new output or the same settings")
    if write:
        write_json_atomic(path, settings, indent=1)


def read_jsonl(path: str | Path, error: Callable[[str], Exception] = ValueError) -> list[dict]:
    """Records of an append-only JSONL file (`JsonlWriter`); a torn last line (killed mid-write) is
    ignored, any other bad line raises `error`."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if lineno == len(lines):  # no trailing newline: the last write was cut
                break
            raise error(f"{path}:{lineno}: corrupt record ({exc.msg})") from exc
    return out


class JsonlWriter:
    """Append-only JSONL: one complete line per write, flushed (a torn line can only be the last)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size and not (data := path.read_bytes()).endswith(b"\n"):
            with path.open("r+b") as fh:  # a previous run was killed mid-line: drop the torn line
                fh.truncate(data.rfind(b"\n") + 1)
        self._fh = path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
