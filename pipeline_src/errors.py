"""The project's error types: faults a user can cause and fix, as opposed to bugs.

Every expected fault (bad data, config, recipe or preset values, missing or corrupt files, checkpoints of
another model, unreachable hosts) is raised as a `PipelineError` whose message names the file, the field or
the value and says what to do. `python -m pipeline_src` prints such an error as one line, `error: <message>`,
and exits 2; anything else is a bug and keeps its traceback. `--debug` (or PIPELINE_DEBUG=1) shows the
traceback of a `PipelineError` too.

The specific types also derive from the builtin they replace (ValueError, RuntimeError, ...), so code that
catches those keeps working.
"""
from __future__ import annotations

EXIT_USER_ERROR = 2


class PipelineError(Exception):
    """A fault the user can fix; the message names the culprit and what to do."""


class ConfigError(PipelineError, ValueError):
    """A config, recipe, preset or registry file or value that is wrong; the message names the file and field."""


class UnknownNameError(PipelineError, KeyError):
    """A name (model, loss, dataset, preset, ...) that no registry knows; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError's own str() would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DataError(PipelineError, ValueError):
    """A dataset file or tree that is not what its dataset declares."""


class CheckpointError(PipelineError, ValueError):
    """A model or training-state file that is missing, truncated, or of another model, variant or format."""


class ExportError(PipelineError, RuntimeError):
    """An export, quantization, engine or bundle step that cannot produce a trustworthy artifact."""


def one_line(message: str) -> str:
    """A message on one line: a multi-line explanation is joined with '; '."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return "; ".join(parts) if parts else "(no message)"
