"""Reading a YAML config file into a model, with every problem listed by path.

A bad config fails at start with all its problems at once, each named the way the user wrote
it (`exports[2].splunk.hecUrl: ...`), rather than one at a time or as a stack trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from sealtrail.api.errors import UNKNOWN_SETTING, field_errors

__all__ = ["ConfigFileError", "load_config"]

M = TypeVar("M", bound=BaseModel)


class ConfigFileError(Exception):
    """A config file cannot be read or is invalid; `problems` lists every problem."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        """Name the file and its problems."""
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems


def load_config(path: Path, model: type[M]) -> M:
    """Parse `path` (YAML or JSON) as `model`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigFileError(path, [f"cannot read: {error.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigFileError(path, [f"not valid YAML: {error}"]) from None
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = field_errors(error, unknown=UNKNOWN_SETTING)
        raise ConfigFileError(path, [str(problem) for problem in problems]) from None
