"""The Celery application, configured from Django settings (the CELERY_* names).

`broker/__init__.py` imports it, so every Django process enqueues through this configured app.
"""

import logging
import os
from pathlib import Path

from celery import Celery, signals
from celery.beat import PersistentScheduler
from django.conf import settings

from logs import JsonFormatter, request_id
from redaction import RedactSecretsFilter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broker.settings")

logger = logging.getLogger(__name__)

# The message header that carries the request id of the session request behind a task (logs.py).
REQUEST_ID_HEADER = "broker_request_id"

app = Celery("broker")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _create_filesystem_spool(sender: Celery, **kwargs) -> None:
    # kombu's filesystem transport (the embedded default broker) expects its folders to exist.
    if str(sender.conf.broker_url).startswith("filesystem://"):
        for key in ("data_folder_in", "data_folder_out", "control_folder"):
            folder = sender.conf.broker_transport_options.get(key)
            if folder:
                Path(folder).mkdir(parents=True, exist_ok=True)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _redact_worker_logs(logger: logging.Logger, **kwargs) -> None:
    # A worker replaces the root logger's handlers (and so Django's filter and format) with its
    # own.
    for handler in logger.handlers:
        handler.addFilter(RedactSecretsFilter([settings.OPENAI_API_KEY]))
        if settings.LOG_FORMAT == "json":
            handler.setFormatter(JsonFormatter())


class Scheduler(PersistentScheduler):
    """Beat's default scheduler, creating the folder of its schedule file first.

    On a fresh checkout `var/` does not exist yet, and the stock scheduler dies opening the file
    there (with `worker -B`, beat dies while the worker goes on, and nothing is scheduled).
    """

    def setup_schedule(self) -> None:
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()


def publish_safely(task_name: str, *, expires: float | None = None, **kwargs) -> bool:
    """Publish the task named `task_name` with JSON kwargs now; on a broker outage log it and
    return False. A worker discards the message unrun once `expires` seconds have passed.

    By name, so that the services that publish never import the tasks module that imports them.
    It must never fail the web request that caused it: the database stays the source of truth
    and the periodic sweep catches up. After a failure, the process does not even try for a few
    seconds, so a silent broker costs one request a timeout, not every request.
    """
    # Imported here, not at the top: the broker package imports this module.
    from broker.metrics import ENQUEUE_FAILURES
    from broker.redis_breaker import redis_breaker

    if not redis_breaker.available():
        logger.warning("Could not enqueue %s: Redis is paused after a failure.", task_name)
        ENQUEUE_FAILURES.labels(task_name, "paused").inc()
        return False
    # The session request (or task) that asks for this one: its worker logs under the same id.
    headers = {REQUEST_ID_HEADER: bound} if (bound := request_id.get()) else None
    try:
        app.send_task(task_name, kwargs=kwargs, expires=expires, headers=headers)
    except Exception as exc:  # noqa: BLE001 - any broker failure, by design
        logger.warning("Could not enqueue %s; the next sweep will catch up.", task_name)
        ENQUEUE_FAILURES.labels(task_name, "error").inc()
        redis_breaker.failed(f"enqueue: {type(exc).__name__}")
        return False
    return True


@signals.task_prerun.connect
def _request_id_bind(task=None, **kwargs) -> None:
    # In the process or thread that runs the task, so that its log lines carry the id.
    request_id.set(getattr(task.request, REQUEST_ID_HEADER, None))


@signals.task_postrun.connect
def _request_id_clear(**kwargs) -> None:
    request_id.set(None)
