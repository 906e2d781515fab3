"""Versioned JSON files: load with clear errors, save atomically.

Every JSON file OrthoNav writes is a pydantic model derived from :class:`Versioned`, carrying
``schema_version``. Loading a file from a newer schema, a corrupt file or one that fails
validation raises :class:`~orthonav.core.errors.SchemaError` naming the file and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .atomic import write_text
from .errors import InputError, SchemaError


class Versioned(BaseModel):
    """Base for every versioned JSON document. Subclasses set ``SCHEMA_VERSION``."""

    model_config = ConfigDict(extra="forbid")
    SCHEMA_VERSION: ClassVar[int] = 1
    schema_version: int = 1

    def __init__(self, **data: object) -> None:
        data.setdefault("schema_version", type(self).SCHEMA_VERSION)
        super().__init__(**data)


M = TypeVar("M", bound=Versioned)


def read_json_file(path: str | Path, what: str = "JSON file") -> object:
    """Parse a JSON file, raising InputError / SchemaError that name the file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, f"{what} not found")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SchemaError(p, f"{what} is not UTF-8 text ({e.reason})") from e
    except json.JSONDecodeError as e:
        raise SchemaError(p, f"{what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e


def load_model(path: str | Path, model: type[M]) -> M:
    """Load and validate ``path`` as ``model``.

    Raises
    ------
    InputError
        The file does not exist.
    SchemaError
        Invalid JSON, no or a newer ``schema_version``, or a validation failure.
    """
    p = Path(path)
    what = model.__name__
    data = read_json_file(p, what)
    if not isinstance(data, dict):
        raise SchemaError(p, f"{what} must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise SchemaError(p, f"{what} has no integer 'schema_version'")
    if version > model.SCHEMA_VERSION:
        raise SchemaError(
            p,
            f"{what} has schema_version {version}, newer than this OrthoNav reads "
            f"(up to {model.SCHEMA_VERSION}); upgrade OrthoNav to open it",
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        where = f" at '{loc}'" if loc else ""  # a whole-document check (model validator) has no field to name
        raise SchemaError(p, f"{what} is invalid{where}: {first['msg']} ({e.error_count()} error(s))") from e


def save_model(path: str | Path, doc: Versioned) -> Path:
    """Atomically write ``doc`` as indented JSON, stamped with this OrthoNav's schema version
    (a document read from an older version is written back as the current one)."""
    current = type(doc).SCHEMA_VERSION
    if doc.schema_version > current:
        raise SchemaError(Path(path), f"{type(doc).__name__} has schema_version {doc.schema_version}, newer than this OrthoNav writes ({current})")
    if doc.schema_version < current:
        doc = doc.model_copy(update={"schema_version": current})
    return write_text(path, doc.model_dump_json(indent=2) + "\n")
