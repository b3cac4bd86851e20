"""The decorator every stage config uses: a pydantic dataclass that refuses unknown fields, so a
misspelt parameter in the Prefect form, a preset or a job file is an error naming the field
rather than a silent default."""

from __future__ import annotations

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass


def config_dataclass(cls):
    return dataclass(config=ConfigDict(extra="forbid"))(cls)
