"""Every change of schemas/ddl.sql comes with a new layout number and its upgrade step.

Twice a change of the DDL landed without one (a view's new column, a new table that
needed a backfill): stores written in between could not be repaired by the DDL's own
``IF NOT EXISTS`` and broke later (layout 19 repaired them). The DDL's statements are
fingerprinted here, per layout: a change to them fails this test until SCHEMA_VERSION
is bumped, a MIGRATIONS step leads the previous layout to it, and the new fingerprint
is recorded below. (Comments and blank lines are not part of the fingerprint.)
"""

from __future__ import annotations

import hashlib

from schemas import ddl_statements
from stream_processors.store import FIRST_LAYOUT, MIGRATIONS, SCHEMA_VERSION, ddl_names

# layout -> sha256 of its DDL statements (joined as below)
DDL_FINGERPRINTS = {
    19: "939136f4fb979640334679c1ecf97c28d22f2fc0a6aa729b7b2b99404c1515bd",
    20: "735d414f4e722462adc7fcaa7544191c8e47997910c07a04daf763ed9f0768ff",
    21: "6f21c0cbba2a5be31a9652769339dbd4bb6556f67fdae4aa063ba64966f57707",
    22: "1747c572dd2f3d477d202bf3f56f063305f63fa13f0c9dda8e401700b37ced96",
}


def test_the_ddl_is_the_one_its_layout_number_names() -> None:
    fingerprint = hashlib.sha256("\n;\n".join(ddl_statements()).encode()).hexdigest()
    assert DDL_FINGERPRINTS.get(SCHEMA_VERSION) == fingerprint, (
        f"schemas/ddl.sql changed (its statements now hash to {fingerprint}): bump "
        f"SCHEMA_VERSION (now {SCHEMA_VERSION}), add the MIGRATIONS step from the previous "
        "layout, and record the new fingerprint in DDL_FINGERPRINTS")


def test_every_layout_since_the_oldest_upgradable_has_its_step() -> None:
    assert set(range(min(MIGRATIONS), SCHEMA_VERSION)) == set(MIGRATIONS)


# The tables and views of layout 9, the oldest one upgraded: a store of any layout has
# them, so one that lacks them is damaged (store._lost_objects)
LAYOUT_9 = {
    "port_observations", "findings", "findings_mv", "current_findings", "port_prevalence",
    "port_prevalence_mv", "internet_prior", "host_scans", "host_latest", "host_latest_mv",
    "latest_host_scans", "tls_probes", "tls_latest", "tls_latest_mv", "latest_tls_probes",
    "tls_ciphers", "certificates", "changes", "host_state", "port_state", "schema_version",
    "alert_outbox", "alert_claims", "accepted_risks", "watch_runs",
}


def test_every_table_and_view_says_which_layout_made_it() -> None:
    # a new one without its layout would make every older store read as damaged
    assert set(ddl_names()) == LAYOUT_9 | set(FIRST_LAYOUT)
    assert not LAYOUT_9 & set(FIRST_LAYOUT)
    assert all(9 < layout <= SCHEMA_VERSION for layout in FIRST_LAYOUT.values())
