"""Error types raised at the project's boundaries (bad models, bad checkpoints, bad requests)."""


class HassError(Exception):
    """Base class: every error the project raises on purpose names the offending input."""


class ModelNotFoundError(HassError):
    """A target or draft path / hub id / GGUF file could not be resolved."""


class CheckpointMismatchError(HassError):
    """A draft checkpoint does not fit the target (shapes, vocab, hidden size, keys)."""


class InvalidRequestError(HassError, ValueError):
    """A generation request is malformed (empty prompt, bad lengths, bad sampling params)."""
