"""`sentimon review`, `sentimon adapters` and `sentimon train`: the training loop from the terminal.

monitor/cli.py registers these commands, and this module uses its helpers (config loading, errors, the console)
only when a command runs, so that importing either module first works.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import duckdb
import typer
from rich.table import Table

from monitor.config import Config
from storage.db import DatabaseError
from storage.reviews import adapter_usage, review_queue

if TYPE_CHECKING:
    from training.registry import Manifest

review_app = typer.Typer(
    help="Check and correct the model's extractions, least confident first; reviewed examples train the next adapter.",
    invoke_without_command=True,
)
adapters_app = typer.Typer(help="The adapter registry: trained versions, their scores, the one in use.",
                           no_args_is_help=True)  # fmt: skip

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Config file (as for every command).")]
Reviewer = Annotated[str | None, typer.Option(help="Name stored with each decision (default: $USER).")]


@dataclass(frozen=True)
class ReviewDefaults:
    """`sentimon review`'s options given before a subcommand, which apply to it."""

    config_file: Path | None
    reviewer: str | None


def _cli() -> ModuleType:
    from monitor import cli

    return cli


@review_app.callback()
def review(
    ctx: typer.Context,
    config_file: ConfigOption = None,
    reviewer: Reviewer = None,
    since: Annotated[str, typer.Option(help="Articles first seen this recently: 12h, 7d, 2w.")] = "7d",
    limit: Annotated[int, typer.Option(min=1, help="At most this many articles in one session.")] = 50,
) -> None:
    """Review recent extractions: [a]ccept, [e]dit, [+] add, [-] drop an entity, [s]kip, [q]uit."""
    if ctx.invoked_subcommand is not None:  # `review -c FILE export`: the subcommands fall back to these
        ctx.obj = ReviewDefaults(config_file, reviewer)
        return
    from training.review import CHARS_PER_TOKEN, ReviewSession, default_reviewer, ensure_schema

    cli = _cli()
    config = cli.settings(config_file)
    start = datetime.now(UTC) - cli.duration(since)
    database = cli.open_database(config)
    session: ReviewSession | None = None
    try:
        ensure_schema(database)
        with database.read() as conn:
            queue = review_queue(conn, start, limit)
        if not queue:
            cli.console.print(f"nothing to review: every analysis of the last {since} has been reviewed")
            return
        session = ReviewSession(
            database, reviewer=reviewer or default_reviewer(), console=cli.console,
            ask=lambda question: cli.console.input(f"{question} > ", markup=False),
            text_chars=config.model.max_input_tokens * CHARS_PER_TOKEN,
        )  # fmt: skip
        tally = session.run(queue)
    except DatabaseError as exc:
        saved = "; decisions made before this one are saved" if session and session.tally.decisions else ""
        raise cli.fail(f"{exc}{saved}") from None
    done = ", ".join(f"{count} {decision}" for decision, count in sorted(tally.decisions.items())) or "nothing decided"
    cli.console.print(f"{done}; {tally.left} left in this session's queue")


@review_app.command("export")
def review_export(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write.")],
    config_file: ConfigOption = None,
) -> None:
    """Write the reviewed examples as JSONL ({"id", "text", "extractions"}), the format `sentimon eval` reads."""
    from training.review import export_reviews

    cli = _cli()
    config = cli.settings(config_file or ctx.obj.config_file)
    try:
        count = export_reviews(cli.open_database(config), out)
    except (DatabaseError, OSError) as exc:
        raise cli.fail(str(exc)) from None
    cli.console.print(f"wrote {count} reviewed examples to {out}")


@review_app.command("import")
def review_import(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSONL of {\"id\", \"text\", \"extractions\"} records.")],
    config_file: ConfigOption = None,
    reviewer: Reviewer = None,
) -> None:
    """Add reviewed examples from a JSONL file (all of them, or none if any record is unusable)."""
    from training.review import ReviewImportError, default_reviewer, import_reviews

    cli = _cli()
    config = cli.settings(config_file or ctx.obj.config_file)
    reviewer = reviewer or ctx.obj.reviewer or default_reviewer()
    try:
        added, unchanged = import_reviews(cli.open_database(config), file, reviewer=reviewer)
    except (ReviewImportError, DatabaseError) as exc:
        raise cli.fail(str(exc)) from None
    already = f" ({unchanged} already stored)" if unchanged else ""
    cli.console.print(f"imported {added} reviewed examples from {file}{already}")


@adapters_app.command("list")
def adapters_list(config_file: ConfigOption = None) -> None:
    """Every trained version with its development-set scores, and the one in use."""
    from training.registry import ADAPTER_FILE, BASE, BUNDLED, RegistryError, registry_for

    cli = _cli()
    config = cli.settings(config_file)
    registry = registry_for(config)
    try:
        versions, current, bundled = registry.versions(), registry.current_label(), registry.bundled_manifest()
    except RegistryError as exc:
        raise cli.fail(str(exc)) from None
    usage = _usage(cli, config)
    table = Table(title=f"adapters ({registry.root})")
    columns = ("version", "status", "created", "examples", "entity F1", "ent+pol F1", "valid JSON",
               "FinEntity ent+pol", "compared with", "analyses", "kept by reviewers")
    for column in columns:
        table.add_column(column, justify="left" if column in ("version", "status", "compared with") else "right")
    rows = [(BUNDLED, bundled, registry.bundled)] if bundled else []
    rows += [(m.version, m, registry.root / m.version / ADAPTER_FILE) for m in versions]
    for label, m, path in rows:
        metrics, baseline = m.metrics or {}, m.baseline or {"version": "", "metrics": {}}
        analyses, kept = usage.get(str(path), ("", None))
        table.add_row(
            label, _status(label, m, current), m.created_at.strftime("%Y-%m-%d %H:%M"), _examples(m),
            *(_percent(metrics.get(key)) for key in ("entity_f1", "entity_polarity_f1", "valid_json_rate")),
            _percent((m.finentity_metrics or {}).get("entity_polarity_f1")),
            f"{baseline['version']} {_percent(baseline['metrics'].get('entity_f1'))}".strip(),
            str(analyses), _percent(kept), style="bold" if label == current else None,
        )  # fmt: skip
    console = cli.console
    console.print(table if rows else f"no trained versions in {registry.root} yet (`sentimon train` makes one)")
    where = {BASE: " (the base model, no adapter)", BUNDLED: f" ({registry.bundled})"}.get(current, "")
    console.print(f"in use: {current}{where}")


@adapters_app.command("rollback")
def adapters_rollback(
    version: Annotated[str | None, typer.Argument(help="v003, bundled or base (default: the previous one).")] = None,
    config_file: ConfigOption = None,
) -> None:
    """Switch to the previous adapter, or to the given version. A running daemon follows before its next article."""
    from training.registry import RegistryError, registry_for

    cli = _cli()
    try:
        label = registry_for(cli.settings(config_file)).rollback(version)
    except RegistryError as exc:
        raise cli.fail(str(exc)) from None
    cli.console.print(f"now in use: {label}")


@adapters_app.command("merge")
def adapters_merge(
    sources: Annotated[list[str], typer.Argument(help="Two or more: v003, bundled, or adapter .gguf files.")],
    config_file: ConfigOption = None,
    promote: Annotated[bool, typer.Option(help="Promote the average if it wins (--no-promote: score only).")] = True,
    eval_limit: Annotated[int | None, typer.Option(min=1, help="Development records to score (default: all).")] = None,
    rank: Annotated[int | None, typer.Option(min=1, help="Keep the mean's best approximation of this rank (a "
                                             "smaller file; default: exact, the sum of their ranks).")] = None,
) -> None:
    """Average adapters of the same base model into a new version (a "model soup"), score it on the development
    set and promote it if it wins, as `sentimon train` does with what it trains."""
    cli = _cli()
    _require_training_stack(cli)
    from training.refresh import RefreshOptions, merge

    config = cli.settings(config_file)
    cli.setup_logging(config.log_level)
    try:
        outcome = merge(config, sources, RefreshOptions(promote=promote, eval_limit=eval_limit), rank=rank)
    except (OSError, ValueError, RuntimeError) as exc:  # each error names the adapter or setting at fault
        raise cli.fail(str(exc), 1) from None
    cli.console.print(outcome.summary)


def train(
    config_file: ConfigOption = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many steps (a rerun resumes).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Passes over the data (default: training.lora's).")] = None,
    promote: Annotated[bool, typer.Option(help="Promote the candidate if it wins (--no-promote: score only).")] = True,
    out: Annotated[Path | None, typer.Option(help="Training run directory (default: in the adapter registry).")] = None,
    eval_limit: Annotated[int | None, typer.Option(min=1, help="Development records to score (default: all).")] = None,
    force: Annotated[bool, typer.Option(help="Train even if nothing changed since the last version.")] = False,
) -> None:
    """Train a candidate adapter from the reviews and the bundled data, score it, and promote it if it wins."""
    cli = _cli()
    _require_training_stack(cli)
    from training.refresh import RefreshOptions, refresh

    config = cli.settings(config_file)
    cli.setup_logging(config.log_level)
    try:
        outcome = refresh(config, RefreshOptions(steps, epochs, promote, out, eval_limit, force=force))
    except (OSError, ValueError, RuntimeError) as exc:  # each of training's errors names what is wrong
        raise cli.fail(str(exc), 1) from None
    cli.console.print(outcome.summary)


def _require_training_stack(cli: ModuleType) -> None:
    from training.stack import training_stack_problem

    if problem := training_stack_problem():
        raise cli.fail(problem, 1)


def _status(label: str, manifest: Manifest, current: str) -> str:
    from training.registry import BUNDLED

    if label == current:
        return "in use"
    if label == BUNDLED:
        return "shipped"
    return "retired" if manifest.retired_at else manifest.decision


def _examples(manifest: Manifest) -> str:
    if manifest.merged_from:
        return f"mean of {len(manifest.merged_from)}"
    return str(sum(manifest.examples.values()))


def _usage(cli: ModuleType, config: Config) -> dict[str | None, tuple[int, float | None]]:
    """adapter file -> (analyses run with it, share of its reviewed answers kept unchanged), from the database."""
    if not config.database.exists():
        return {}
    try:
        with cli.open_database(config).read() as conn:
            return adapter_usage(conn)
    except (DatabaseError, duckdb.Error):  # an older database without the view: the table goes without those columns
        return {}


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"
