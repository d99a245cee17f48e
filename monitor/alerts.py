"""Sending alerts: a JSON POST to a webhook (a Slack incoming webhook shows its "text") and/or a command that
reads the JSON on stdin. The webhook goes through the daemon's HTTP client, so 429/5xx answers and lost
connections are retried as for feeds. A delivery that still fails is reported, never raised: the alert is
recorded in the database either way."""

from __future__ import annotations

import asyncio
import json

from monitor.config import AlertSettings
from scrapers.http import FetchError, HttpClient
from storage.alerts import Alert


class DeliveryError(Exception):
    """One target did not take an alert; the message says why (never the webhook URL: it is a secret)."""


class AlertSender:
    def __init__(self, settings: AlertSettings, http: HttpClient) -> None:
        self.settings = settings
        self.http = http

    @property
    def has_targets(self) -> bool:
        return bool(self.settings.webhook_url or self.settings.command)

    async def send(self, alert: Alert) -> str | None:
        """Deliver `alert` to every configured target; None when all took it, else what went wrong."""
        body = json.dumps(alert.payload(), ensure_ascii=False).encode()
        errors = []
        if self.settings.webhook_url:
            try:
                await self.http.post(self.settings.webhook_url, body, content_type="application/json")
            except FetchError as exc:
                errors.append(f"webhook: {exc.reason}")
        if self.settings.command:
            try:
                await self._run(self.settings.command, body)
            except DeliveryError as exc:
                errors.append(f"command: {exc}")
        return "; ".join(errors) or None

    async def _run(self, command: list[str], body: bytes) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            raise DeliveryError(f"cannot start {command[0]!r}: {exc.strerror or exc}") from None
        timeout = self.settings.command_timeout_seconds
        try:
            _, stderr = await asyncio.wait_for(process.communicate(body), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise DeliveryError(f"{command[0]} did not finish within {timeout:g} s") from None
        if process.returncode != 0:
            said = stderr.decode(errors="replace").strip()[-200:]
            raise DeliveryError(f"{command[0]} exited with status {process.returncode}" + (f": {said}" if said else ""))
