"""The sentimon configuration: one TOML file, validated by pydantic, overridable from the environment.

Lookup order for the file: ``--config FILE``, then ``$SENTIMON_CONFIG``, then ``./sentimon.toml``; with no file at
all the built-in defaults run. Any key can be overridden with ``SENTIMON_<KEY>``, nested tables with a double
underscore: ``SENTIMON_HTTP__TIMEOUT_SECONDS=30``, ``SENTIMON_WATCHLIST=AAPL,MSFT``. A value is read as its key's
type: a comma list (or a JSON array) for a list, JSON for a table, else the text as it is.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from model.settings import ModelSettings
from scrapers.http import HttpSettings
from storage.alerts import SwingRule

ENV_PREFIX = "SENTIMON_"
CONFIG_ENV = "SENTIMON_CONFIG"
NOT_CONFIG_KEYS = {CONFIG_ENV, "SENTIMON_CACHE"}  # variables of ours that name no config key
DEFAULT_CONFIG_FILE = Path("sentimon.toml")
# LoRA trainers `sentimon train` can run (training/trainers.py picks one for "auto").
Trainer = Literal["auto", "torch", "mlx"]
YAHOO_FEED_URL = "https://feeds.finance.yahoo.com/rss/2.0/headline?s={symbols}&region=US&lang=en-US"


class ConfigError(Exception):
    """A configuration problem, worded for the person who wrote the file."""


class PipelineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    analyze: bool = Field(True, description="Run the sentiment model on stored articles (false: ingest only).")
    queue_size: int = Field(200, ge=1, description="Capacity of each bounded queue between stages (backpressure).")
    fetch_concurrency: int = Field(8, ge=1, description="Article pages fetched at once (per-host limits still apply).")
    extract_processes: int = Field(1, ge=1, description="Worker processes running trafilatura extraction.")
    page_retries: int = Field(3, ge=0, description="Times a page that could not be had (403, paywall, timeout) is tried again.")
    page_retry_delay_seconds: float = Field(
        600.0, gt=0, description="Delay before the first page retry; doubles with each further attempt."
    )
    write_interval_seconds: float = Field(
        0.5, gt=0, description="Longest time a write waits to be batched; the database file is free between batches."
    )
    shutdown_grace_seconds: float = Field(
        20.0, ge=0, description="On SIGTERM, time allowed to finish in-flight work; the rest stays queued in the database."
    )


class AlertSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        True, description="After each analysis, check its tickers for a swing in sentiment (table `alerts`)."
    )
    window_hours: float = Field(24.0, gt=0, description="The latest news: mean score over this many hours.")
    baseline_hours: float = Field(
        168.0, gt=0, description="Compared with the mean over this many hours before it (0 if it holds no news)."
    )
    threshold: float = Field(
        0.5, gt=0, le=2, description="Alert when the two means differ by at least this (scores run from -1 to 1)."
    )
    min_articles: int = Field(3, ge=1, description="Articles the latest window needs before a swing counts.")
    cooldown_hours: float = Field(
        6.0, ge=0, description="No second alert for a ticker in the same direction within this many hours."
    )
    webhook_url: str | None = Field(
        None, description='POST each alert as JSON here ([http] retries apply); Slack webhooks show its "text".'
    )
    command: list[str] | None = Field(
        None, description='Run this program with each alert as JSON on stdin, e.g. ["/usr/local/bin/notify"].'
    )
    command_timeout_seconds: float = Field(10.0, gt=0, description="Longest wait for the command to finish.")

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return url

    @field_validator("command")
    @classmethod
    def _program_named(cls, command: list[str] | None) -> list[str] | None:
        if command is not None and not (command and command[0].strip()):
            raise ValueError("must name the program first, e.g. [\"/usr/local/bin/notify\", \"--flag\"]")
        return command

    def rule(self) -> SwingRule:
        return SwingRule(
            window=timedelta(hours=self.window_hours), baseline=timedelta(hours=self.baseline_hours),
            min_articles=self.min_articles, threshold=self.threshold, cooldown=timedelta(hours=self.cooldown_hours),
        )  # fmt: skip


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str | None = Field(
        None, description='Serve Prometheus metrics at http://HOST:PORT/metrics, e.g. "127.0.0.1:9108" (unset: off).'
    )

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, listen: str | None) -> str | None:
        if listen is None:
            return None
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError('must be HOST:PORT with a port from 1 to 65535, e.g. "127.0.0.1:9108"')
        return listen

    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class TrainingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        True, description="Retrain the LoRA adapter on schedule once enough new reviews came in (`sentimon review`)."
    )
    schedule: str = Field(
        "0 3 * * *", description="When to check for new reviews: cron fields minute hour day month weekday, in UTC."
    )
    min_new_reviews: int = Field(50, ge=0, description="Reviews since the last training needed to train again.")
    misfire_grace_seconds: int = Field(
        3600, ge=1, description="A scheduled run missed by up to this long (daemon busy or stopped) still starts."
    )
    adapters_dir: Path | None = Field(
        None, description="Adapter registry: versions and the `current` pointer (default: <database>-adapters/)."
    )
    datasets_dir: Path | None = Field(
        None, description="Folder with train/team.jsonl, finentity/train.jsonl, dev.jsonl; default: the bundled one."
    )
    nice: int = Field(10, ge=0, le=19, description="Niceness of the training process, so ingestion keeps its CPU.")
    trainer: Trainer = Field(
        "auto", description="LoRA trainer: auto = mlx-lm on Apple Silicon (if installed), torch + peft elsewhere."
    )
    eval_limit: int | None = Field(
        None, ge=1, description="Development-set records a candidate adapter is scored on (default: all of them)."
    )
    lora: dict[str, Any] = Field(
        {}, description="LoRA settings: rank, alpha, learning_rate, epochs, batch_tokens, threads... (training/lora.py)."
    )

    @field_validator("schedule")
    @classmethod
    def _cron_line(cls, schedule: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        fields = schedule.split()
        # APScheduler 3 counts weekdays from Monday = 0, cron from Sunday = 0: a number would run on the wrong day.
        if len(fields) == 5 and any(ch.isdigit() for ch in fields[4]):
            raise ValueError("write the weekday by name (mon-fri, sun), not by number")
        try:
            CronTrigger.from_crontab(schedule, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"not a cron line (minute hour day month weekday): {exc}") from None
        return schedule

class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    watchlist: list[str] = Field(
        ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "JPM"], description="Tickers to follow."
    )
    feed_url: str = Field(YAHOO_FEED_URL, description="Feed URL template; {symbols} is a comma-joined batch of tickers.")
    batch_size: int = Field(10, ge=1, le=100, description="Tickers asked for in one feed request.")
    extra_feeds: list[str] = Field([], description="More RSS/Atom URLs to poll as they are (no ticker hint).")
    database: Path = Field(Path("sentimon.duckdb"), description="DuckDB file holding articles and sentiment.")
    poll_interval_seconds: float = Field(300.0, ge=1, description="Seconds between two polls of the same feed.")
    poll_jitter: float = Field(0.1, ge=0, le=1, description="Random spread of each poll time, as a fraction of the interval.")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    aliases: dict[str, str] = Field({}, description='Extra entity names to link to tickers, e.g. "Google" = "GOOGL".')
    http: HttpSettings = Field(default_factory=HttpSettings, description="How feeds and pages are fetched.")
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings, description="Queues, workers and retries.")
    model: ModelSettings = Field(default_factory=ModelSettings, description="The sentiment model.")
    training: TrainingSettings = Field(
        default_factory=TrainingSettings, description="Adapter training from reviews, its schedule and promotion."
    )
    alerts: AlertSettings = Field(
        default_factory=AlertSettings, description="Alerts when a ticker's news sentiment swings."
    )
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="Prometheus metrics endpoint.")

    @field_validator("watchlist")
    @classmethod
    def _tickers_upper(cls, tickers: list[str]) -> list[str]:
        cleaned = [t.strip().upper() for t in tickers]
        for ticker in cleaned:
            if not ticker or any(ch.isspace() or ch == "," for ch in ticker):
                raise ValueError(f"{ticker!r} is not a ticker symbol")
        return list(dict.fromkeys(cleaned))

    @field_validator("feed_url")
    @classmethod
    def _has_symbols_placeholder(cls, url: str) -> str:
        if "{symbols}" not in url:
            raise ValueError("must contain the {symbols} placeholder (use extra_feeds for fixed URLs)")
        return url

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        if level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level.upper()

    def feeds(self) -> list[tuple[str, tuple[str, ...]]]:
        """Every feed to poll, with the tickers it is about."""
        batches = [self.watchlist[i : i + self.batch_size] for i in range(0, len(self.watchlist), self.batch_size)]
        templated = [(self.feed_url.replace("{symbols}", ",".join(batch)), tuple(batch)) for batch in batches]
        return templated + [(url, ()) for url in self.extra_feeds]


def config_path(explicit: Path | None, environ: Mapping[str, str] | None = None) -> Path:
    if explicit is not None:
        return explicit
    return Path((os.environ if environ is None else environ).get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate; every error names the key and the reason."""
    environ = os.environ if environ is None else environ
    explicit = path is not None or bool(environ.get(CONFIG_ENV))
    file = config_path(path, environ)
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    elif explicit:
        raise ConfigError(f"{file}: no such config file (run `sentimon init` to write one)")
    variables = _apply_env(data, environ)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = [(err, _variable_of(err["loc"], variables)) for err in exc.errors()]
        # With no file, everything but the environment is a valid default.
        origins = dict.fromkeys(str(file) if var is None and file.exists() else "the environment" for _, var in errors)
        lines = [_describe(err, var) for err, var in errors]
        raise ConfigError(f"{' and '.join(origins)}:\n" + "\n".join(lines)) from None


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Set the keys named by SENTIMON_ variables in `data`; returns the variable that set each key path."""
    variables: dict[tuple[str, ...], str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_CONFIG_KEYS:
            continue
        keys = tuple(name[len(ENV_PREFIX) :].lower().split("__"))
        target = data
        for key in keys[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{name}: {'.'.join(keys[:-1])} is not a table")
        target[keys[-1]] = _env_value(raw, _declared_type(keys))
        variables[keys] = name
    return variables


def _declared_type(keys: tuple[str, ...]) -> Any:
    """The annotation of the config key at this path; Any where none is declared."""
    annotation: Any = Config
    for key in keys:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(key)
            annotation = field.annotation if field else Any
        else:
            annotation = get_args(annotation)[1] if get_origin(annotation) is dict else Any
    return annotation


def _env_value(raw: str, annotation: Any) -> Any:
    """A variable's text as its key's type takes it; pydantic reads numbers and booleans from text itself."""
    members = get_args(annotation) if get_origin(annotation) is UnionType else (annotation,)
    kinds = {get_origin(member) or member for member in members} - {NoneType}
    if list in kinds and not raw.lstrip().startswith("["):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if kinds <= {str, Path, int, float, bool, Literal}:
        return raw
    try:  # a table, a JSON array, or a value of undeclared type
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _variable_of(loc: tuple[Any, ...], variables: dict[tuple[str, ...], str]) -> str | None:
    return next((name for keys, name in variables.items() if loc[: len(keys)] == keys), None)


def _describe(error: dict[str, Any], variable: str | None) -> str:
    key = ".".join(str(part) for part in error["loc"])
    where = f"{variable} ({key})" if variable else key
    if error["type"] == "extra_forbidden":
        return f"  {where}: unknown key{_suggestion(error['loc'])}"
    message = error["msg"].removeprefix("Value error, ") if error["type"] == "value_error" else error["msg"]
    return f"  {where}: {message} (got {error['input']!r})"


def _suggestion(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        annotation = model.model_fields.get(str(part))
        if annotation is None or not isinstance(annotation.annotation, type):
            return ""
        if not issubclass(annotation.annotation, BaseModel):
            return ""
        model = annotation.annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(model.model_fields)})"
