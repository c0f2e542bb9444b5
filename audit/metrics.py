"""Alert metrics read from the database at scrape time (broker/metrics_endpoint.py).

The Celery worker, which fires alerts and sends notifications, exposes no metrics of its own:
the tables are the truth, and one small indexed query each answers for every worker there is.
"""

import itertools

from django.db import DatabaseError
from django.db.models import Count, QuerySet
from prometheus_client.core import GaugeMetricFamily

from audit.alerting.rules import DEFAULT_RULES
from audit.models import Alert, AlertNotification

_UNSENT = (AlertNotification.Status.PENDING, AlertNotification.Status.FAILED)


class AlertCollector:
    """Incidents by rule and state, and notifications not sent yet by channel and status."""

    def collect(self):
        try:
            alerts = _counted(
                "chatkit_alerts",
                "Alert incidents in the database by rule and state (firing, resolved).",
                Alert.objects.all(),
                rule=[rule.name for rule in DEFAULT_RULES],
                state=Alert.State.values,
            )
            unsent = _counted(
                "chatkit_alert_notifications_unsent",
                "Alert notifications not delivered: pending (queued or retrying) or failed "
                "(given up), by channel.",
                AlertNotification.objects.filter(status__in=_UNSENT),
                channel=AlertNotification.Channel.values,
                status=list(_UNSENT),
            )
        except DatabaseError:
            return  # broker_dependency_up{dependency="database"} says why they are missing
        yield alerts
        yield unsent


def _counted(name: str, documentation: str, rows: QuerySet, **known: list[str]):
    """Rows counted by the labels' columns; every known combination is there, at 0 if none: a
    series that appears only once something went wrong is hard to graph and alert on."""
    labels = list(known)
    counts = dict.fromkeys(itertools.product(*known.values()), 0)
    for row in rows.values(*labels).annotate(n=Count("id")).order_by():
        counts[tuple(row[label] for label in labels)] = row["n"]
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(counts.items()):
        family.add_metric(list(key), value)
    return family
