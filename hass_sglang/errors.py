"""Every error the project raises on purpose, and the one place the command lines turn them into exits.

Each error names the offending input (a path, a flag, a request field). `hass` and
`python -m hass_sglang.bench` both run their handlers through `run_command`: an expected error
prints `error: <message>` and exits 2, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Callable


class HassError(Exception):
    """Base class: every error the project raises on purpose names the offending input."""


class ModelNotFoundError(HassError):
    """A target or draft path / hub id / GGUF file could not be resolved."""


class CheckpointMismatchError(HassError):
    """A draft checkpoint does not fit the target (shapes, vocab, hidden size, keys)."""


class InvalidRequestError(HassError, ValueError):
    """A generation request is malformed (empty prompt, bad lengths, bad sampling params)."""


class ConfigError(HassError, ValueError):
    """A setting is out of range or inconsistent (a tree shape, a flag combination)."""


class DataError(HassError):
    """A training data source or output folder is missing, unreadable or from other settings."""


class DatasetError(HassError):
    """A question file is missing or malformed (the message names the file and line)."""


class LaunchError(HassError):
    """A `--launch` spec names a draft that does not exist, or the options contradict each other."""


class ServerStartError(HassError):
    """An `sglang.launch_server` process exited or did not become ready (the message names its log)."""


class EndpointDownError(HassError):
    """An endpoint did not answer after the bounded retries (the message names method and URL)."""


class ResultsError(HassError):
    """A benchmark result folder is missing, malformed, or was made with incompatible settings."""


def run_command(handler: Callable[..., int], *args) -> int:
    """Run a command-line handler; expected errors become `error: ...` on stderr and exit code 2."""
    try:
        return handler(*args)
    except (HassError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
