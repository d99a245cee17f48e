"""Writes the commented default config that `sentimon init` creates, straight from the settings models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel

from monitor.config import Config


def default_config_text() -> str:
    header = [
        "# sentimon configuration. Every key is optional: a missing key takes the value shown.",
        "# Override any key from the environment: SENTIMON_<KEY>, or SENTIMON_<TABLE>__<KEY> for a table.",
        "",
    ]
    return "\n".join(header + _render(Config(), prefix=None)) + "\n"


def _render(settings: BaseModel, prefix: str | None) -> list[str]:
    scalars: list[str] = []
    tables: list[str] = []
    for name, field in type(settings).model_fields.items():
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            table = f"{prefix}.{name}" if prefix else name
            tables += ["", f"[{table}]", f"# {field.description}" if field.description else ""]
            tables += _render(value, table)
            continue
        if field.description:
            scalars.append(f"# {field.description}")
        scalars.append(_assignment(name, value))
    return scalars + tables


def _assignment(name: str, value: Any) -> str:
    if value is None:
        return f"# {name} ="
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, dict):  # an inline table, so the keys after it stay at this level
        return f"{name} = {{{', '.join(tomli_w.dumps({k: v}).strip() for k, v in value.items())}}}"
    return tomli_w.dumps({name: value}).strip()
