"""Rule matching: does a change event satisfy a rule's ``when:``?

Owns: the one predicate ``matches(match, event, prevalence)`` and the prevalence bucket
rule (the same thresholds as schemas/reports/list.sql). Text comparisons are
case-insensitive; an empty criterion matches everything.

Also: ``unknown_organizations``, the rules' organizations no target names (a misspelt
one silently matches nothing). Must not touch: the store, the network, delivery
state. The caller looks the prevalence up and passes it in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from portwatch.alerts.config import AlertConfig, Match
from schemas.records import SEVERITY_ORDER, ChangeEvent


def prevalence_bucket(instances: int) -> str:
    """Distinct instances of a (proto, port) -> the List report's bucket name."""
    if instances > 3000:
        return "very common"
    if instances >= 500:
        return "somewhat common"
    if instances >= 50:
        return "less common"
    return "rare"


def unknown_organizations(config: AlertConfig, known: Iterable[str]
                          ) -> list[tuple[str, str]]:
    """(rule, organization) of each organization a rule names that is none of ``known``
    (compared as ``matches`` does): such a rule matches nothing until a scan says that
    organization, most often because it is misspelt, and nothing would ever say so."""
    seen = {k.strip().lower() for k in known}
    return sorted((rule.name, org) for rule in config.rules
                  for org in rule.match.organizations if org not in seen)


def matches(match: Match, event: ChangeEvent, prevalence: str = "") -> bool:
    """True when ``event`` satisfies every criterion of ``match``.

    ``prevalence`` is the bucket of the event's (proto, port), '' when unknown (host
    events have no port): a rule that asks for a bucket never matches an unknown one.
    """
    if match.kinds and event.kind not in match.kinds:
        return False
    if match.severity_min is not None and (
            SEVERITY_ORDER.index(event.severity) < SEVERITY_ORDER.index(match.severity_min)):
        return False
    if match.severities and event.severity not in match.severities:
        return False
    if match.colors and event.risk_color.lower() not in match.colors:
        return False
    if match.organizations and event.target.organization.strip().lower() not in \
            match.organizations:
        return False
    if (match.target_names or match.target_networks) and not _target_matches(match, event):
        return False
    if match.protos and event.proto.value not in match.protos:
        return False
    if match.ports and not any(s.first <= event.port <= s.last for s in match.ports):
        return False
    return not (match.prevalence and prevalence not in match.prevalence)


def _target_matches(match: Match, event: ChangeEvent) -> bool:
    t = event.target
    for text in (t.target, t.ip, t.hostname, t.asset):
        if text and text.lower() in match.target_names:
            return True
    if match.target_networks:
        address = ipaddress.ip_address(t.ip)
        return any(address.version == net.version and address in net
                   for net in match.target_networks)
    return False
