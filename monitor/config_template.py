"""Writes the commented default config that `sentimon init` creates, straight from the settings models."""

from __future__ import annotations

from pathlib import Path

import tomli_w
from pydantic import BaseModel

from monitor.config import Config

# Example values, as TOML, of the keys unset by default: written commented out, so removing the "# " gives valid TOML.
EXAMPLES: dict[str, str] = {
    "aliases": '"Alphabet Class A" = "GOOGL"',
    "model.adapter": '"path/to/adapter.gguf"',
    "training.adapters_dir": '"/var/lib/sentimon/adapters"',
    "training.datasets_dir": '"path/to/datasets"',
    "training.eval_limit": "200",
    "training.lora": "rank = 16\nalpha = 32.0\nepochs = 2",
    "alerts.webhook_url": '"https://hooks.slack.com/services/..."',
    "alerts.command": '["/usr/local/bin/notify"]',
    "metrics.listen": '"127.0.0.1:9108"',
}


def default_config_text() -> str:
    header = [
        "# sentimon configuration. Every key is optional: a missing key takes the value shown.",
        '# Keys and tables commented out are unset; remove the "# " to use the example value shown.',
        "# Override any key from the environment: SENTIMON_<KEY>, or SENTIMON_<TABLE>__<KEY> for a table.",
        "",
    ]
    return "\n".join(header + _render(Config(), prefix=None)) + "\n"


def _render(settings: BaseModel, prefix: str | None) -> list[str]:
    scalars: list[str] = []
    tables: list[str] = []
    for name, field in type(settings).model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        value = getattr(settings, name)
        described = [f"# {field.description}"] if field.description else []
        if isinstance(value, BaseModel):
            tables += ["", f"[{key}]", *described, *_render(value, key)]
        elif value == {}:  # a [table] of its own, after this level's keys, so that keys can be added under it
            tables += ["", *described, f"# [{key}]", *(f"# {line}" for line in EXAMPLES[key].splitlines())]
        elif value is None:
            scalars += [*described, f"# {name} = {EXAMPLES[key]}"]
        else:
            scalars += [*described, tomli_w.dumps({name: str(value) if isinstance(value, Path) else value}).strip()]
    return scalars + tables
