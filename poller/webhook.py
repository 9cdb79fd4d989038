"""Trigger events over HTTP: POST each event to the overlay's `/workflows/trigger`. Publish-only.

The body is the TriggerEvent's JSON, with `Authorization: Bearer <OVERLAY_TOKEN>` and `Idempotency-Key:
<event_id>` (a retried POST whose first answer was lost arrives twice; the overlay deduplicates by event id).
Connection failures, timeouts, 408, 425, 429 and 5xx are retried with exponential backoff; any other
answer (401 wrong token, 404 wrong URL, 422 ...) will not get better by retrying. An event that could
not be delivered is appended to a dead-letter JSON Lines file, one object per line:
`{"failed_at": ..., "url": ..., "error": ..., "event": {...}}`, and `publish` returns normally.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
from tenacity import AsyncRetrying, before_sleep_log, retry_if_exception, stop_after_attempt, wait_exponential

from poller.events import TriggerEvent

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429})


class WebhookRejected(Exception):
    """The overlay answered with a non-2xx status."""

    def __init__(self, status_code: int, body: str) -> None:
        self.status_code = status_code
        super().__init__(f"HTTP {status_code}: {body[:200]}")


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, WebhookRejected):
        return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
    return isinstance(exc, httpx.TransportError)


class WebhookPublisher:
    """POSTs events to `url` (the full endpoint); see the module docstring for retries and the dead letters."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        dead_letter_path: str | Path,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.dead_letter_path = Path(dead_letter_path)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.delivered = 0
        self.dead_lettered = 0
        self._client = httpx.AsyncClient(timeout=timeout_s, headers={"Authorization": f"Bearer {token}"})

    async def publish(self, event: TriggerEvent) -> None:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff_s, min=self.backoff_s, max=self.max_backoff_s),
            retry=retry_if_exception(_retryable),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        try:
            await retrying(self._post, event)
        except (httpx.HTTPError, WebhookRejected) as exc:
            await self._dead_letter(event, exc)
            return
        self.delivered += 1

    async def _post(self, event: TriggerEvent) -> None:
        response = await self._client.post(
            self.url,
            content=event.model_dump_json(),
            headers={"Content-Type": "application/json", "Idempotency-Key": event.event_id},
        )
        if not response.is_success:
            raise WebhookRejected(response.status_code, response.text)

    async def _dead_letter(self, event: TriggerEvent, exc: Exception) -> None:
        error = str(exc) or type(exc).__name__
        line = json.dumps(
            {
                "failed_at": datetime.now(UTC).isoformat(),
                "url": self.url,
                "error": error,
                "event": event.model_dump(mode="json"),
            }
        )
        await anyio.to_thread.run_sync(self._append, line)
        self.dead_lettered += 1
        log.error(
            "event %s not delivered to %s (%s); written to %s", event.event_id, self.url, error, self.dead_letter_path
        )

    def _append(self, line: str) -> None:
        self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
        with self.dead_letter_path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    async def aclose(self) -> None:
        await self._client.aclose()
