"""Watch and alert: alert rules, delivery, accepted risks and schedules.

Owns nothing itself; the entry points other packages may call are re-exported here:
``load_alerts(path) -> AlertConfig`` (validate an alerts file; ``AlertConfigError`` is one
FILE:LINE line) and ``AlertDispatcher(store, config)`` with ``submit(events)``,
``deliver_due()`` and ``drain(wait_seconds)``; ``alert_after_scan(store, config, events)``
for a one-shot scan (queue, then deliver within the bounded wait).

Delivery is outbound HTTP/SMTP to the user's own channels; nothing here scans.
"""

from __future__ import annotations

from portwatch.alerts.config import AlertConfig, AlertConfigError, load_alerts
from portwatch.alerts.dispatcher import AlertDispatcher, DeliveryReport, alert_after_scan

__all__ = ["AlertConfig", "AlertConfigError", "AlertDispatcher", "DeliveryReport",
           "alert_after_scan", "load_alerts"]
