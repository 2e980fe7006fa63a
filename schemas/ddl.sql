-- portwatch storage model (DESIGN.md "Storage model"). One DDL for chdb and a
-- ClickHouse server: the store runs these statements unchanged, in order, in the
-- store's database. Every statement is idempotent (IF NOT EXISTS).
--
-- Idempotent writes: every raw table is a ReplacingMergeTree whose sorting key
-- contains the dedup key (scan_id, ip, proto, port [, ...]); replaying a Kafka
-- partition re-inserts identical rows that merge away, and report SQL never
-- counts raw rows without de-duplicating them (uniqExact / FINAL / GROUP BY key).
-- The materialized views only keep min / max / last-written / uniqExact values,
-- which are insensitive to duplicates: a replayed block cannot move first_seen.

-- One row per (scan, target, ip, proto, port) seen open. Ordered for the List report.
CREATE TABLE IF NOT EXISTS port_observations
(
    scan_id          String,
    target           String,
    hostname         String,
    organization     LowCardinality(String),
    asset            String,
    ip               String,
    proto            LowCardinality(String),
    port             UInt16,
    state            LowCardinality(String),
    engine           LowCardinality(String),
    service          LowCardinality(String),
    product          String,
    version          String,
    extra_info       String,
    cpe              String,
    banner           String,
    method           String,
    confidence       UInt8,
    is_tls           UInt8,
    tls_status       LowCardinality(String),
    tls_grade        LowCardinality(String),
    tls_via          LowCardinality(String),   -- issue 13: direct / starttls-smtp / ... ('' = no TLS probe)
    cert_not_after   String,                   -- the leaf's notAfter (ISO 8601), '' = none
    cdn_provider     LowCardinality(String),
    cdn_source       String,
    is_cdn_expected  UInt8,
    risk_color       LowCardinality(String),
    risk_reason      String,
    observed_at      DateTime64(3, 'UTC'),
    -- What analysts pivot on (issue 15): HTTP page title, redirect target, Server and
    -- X-Powered-By headers, favicon hash in Shodan's convention (NULL: no icon fetched;
    -- 0 is a valid hash), JARM TLS fingerprint ('' = not TLS or not tested).
    http_title       String,
    http_redirect    String,
    http_server      String,
    http_powered_by  String,
    favicon_mmh3     Nullable(Int32),
    jarm             String,
    -- 1: identification named a way to TLS on the port (TLS itself, or a service whose
    -- STARTTLS upgrade portwatch speaks), probed in this scan or not (--no-tls); 0: plain
    -- text, nothing to test. Rows written before layout 20 read 1 (unknown: as before).
    tls_reachable    UInt8 DEFAULT 1
)
ENGINE = ReplacingMergeTree(observed_at)
PARTITION BY toYYYYMM(observed_at)
ORDER BY (target, ip, proto, port, scan_id);

-- Current state per (target, ip, proto, port): first_seen = min, last_seen = max,
-- and every other field = its value in the latest observation, kept as
-- max((observed_at, value)): argMax semantics (a replayed older scan never wins),
-- but stored as plain columns, so a report reads only the columns it needs with
-- FINAL; a filter on one field never materializes the others (on 100,000 findings
-- the List query drops from ~350 ms with a tuple argMax state to ~50 ms).
-- "First detected" lives here. Read it through the current_findings view.
CREATE TABLE IF NOT EXISTS findings
(
    target           String,
    ip               String,
    proto            LowCardinality(String),
    port             UInt16,
    first_seen       SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen        SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    last_scan_id     SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    hostname         SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    organization     SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    asset            SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    state            SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    service          SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    product          SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    version          SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    extra_info       SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    cpe              SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    banner           SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    method           SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    is_tls           SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), UInt8)),
    tls_grade        SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    tls_via          SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    cert_not_after   SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    cdn_provider     SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    cdn_source       SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    is_cdn_expected  SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), UInt8)),
    risk_color       SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    risk_reason      SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    http_title       SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    http_redirect    SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    http_server      SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    http_powered_by  SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    favicon_mmh3     SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), Nullable(Int32))),
    jarm             SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String))
)
ENGINE = AggregatingMergeTree
ORDER BY (target, ip, proto, port)
-- Small granules: a report page reads every column of its 50 rows only (keys chosen
-- from port_latest below); with 8,192-row granules 50 scattered keys touched nearly
-- every granule of a 300,000-port estate, with 256 they touch ~50 per part.
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS findings_mv TO findings AS
SELECT
    target, ip, proto, port,
    observed_at AS first_seen,
    observed_at AS last_seen,
    (observed_at, scan_id) AS last_scan_id,
    (observed_at, toString(hostname)) AS hostname,
    (observed_at, toString(organization)) AS organization,
    (observed_at, toString(asset)) AS asset,
    (observed_at, toString(state)) AS state,
    (observed_at, toString(service)) AS service,
    (observed_at, toString(product)) AS product,
    (observed_at, toString(version)) AS version,
    (observed_at, toString(extra_info)) AS extra_info,
    (observed_at, toString(cpe)) AS cpe,
    (observed_at, toString(banner)) AS banner,
    (observed_at, toString(method)) AS method,
    (observed_at, is_tls) AS is_tls,
    (observed_at, toString(tls_grade)) AS tls_grade,
    (observed_at, toString(tls_via)) AS tls_via,
    (observed_at, cert_not_after) AS cert_not_after,
    (observed_at, toString(cdn_provider)) AS cdn_provider,
    (observed_at, toString(cdn_source)) AS cdn_source,
    (observed_at, is_cdn_expected) AS is_cdn_expected,
    (observed_at, toString(risk_color)) AS risk_color,
    (observed_at, toString(risk_reason)) AS risk_reason,
    (observed_at, http_title) AS http_title,
    (observed_at, http_redirect) AS http_redirect,
    (observed_at, http_server) AS http_server,
    (observed_at, http_powered_by) AS http_powered_by,
    (observed_at, favicon_mmh3) AS favicon_mmh3,
    (observed_at, jarm) AS jarm
FROM port_observations;

-- The merged current state, one row per (target, ip, proto, port), plain values.
-- Views are inlined: a query reads only the columns it uses.
CREATE VIEW IF NOT EXISTS current_findings AS
SELECT
    target, ip, proto, port, first_seen, last_seen,
    tupleElement(last_scan_id, 2) AS last_scan_id,
    tupleElement(hostname, 2) AS hostname,
    tupleElement(organization, 2) AS organization,
    tupleElement(asset, 2) AS asset,
    tupleElement(state, 2) AS state,
    tupleElement(service, 2) AS service,
    tupleElement(product, 2) AS product,
    tupleElement(version, 2) AS version,
    tupleElement(extra_info, 2) AS extra_info,
    tupleElement(cpe, 2) AS cpe,
    tupleElement(banner, 2) AS banner,
    tupleElement(method, 2) AS method,
    tupleElement(is_tls, 2) AS is_tls,
    tupleElement(tls_grade, 2) AS tls_grade,
    tupleElement(tls_via, 2) AS tls_via,
    tupleElement(cert_not_after, 2) AS cert_not_after,
    tupleElement(cdn_provider, 2) AS cdn_provider,
    tupleElement(cdn_source, 2) AS cdn_source,
    tupleElement(is_cdn_expected, 2) AS is_cdn_expected,
    tupleElement(risk_color, 2) AS risk_color,
    tupleElement(risk_reason, 2) AS risk_reason,
    tupleElement(http_title, 2) AS http_title,
    tupleElement(http_redirect, 2) AS http_redirect,
    tupleElement(http_server, 2) AS http_server,
    tupleElement(http_powered_by, 2) AS http_powered_by,
    tupleElement(favicon_mmh3, 2) AS favicon_mmh3,
    tupleElement(jarm, 2) AS jarm
FROM findings FINAL;

-- The page index of the reports: per (target, ip, proto, port), the latest observation's
-- few columns that report filters and sorts use, as plain columns of a ReplacingMergeTree
-- on the observation time (the latest wins; a replayed older scan never does). FINAL here
-- merges plain values by one version column, where FINAL over `findings` merges a
-- max(tuple) per column: on 300,000 ports, ~100 ms for all of these columns against ~250 ms
-- for `findings`' last_scan_id alone. A report page chooses its rows (filters, sort,
-- LIMIT) from this table, then reads the full columns of those rows only from
-- current_findings (schemas/reports/list.sql). Same values as current_findings, bar two
-- observations of one port in the same millisecond with different contents.
CREATE TABLE IF NOT EXISTS port_latest
(
    target           String,
    ip               String,
    proto            LowCardinality(String),
    port             UInt16,
    scan_id          String,
    hostname         String,
    organization     LowCardinality(String),
    asset            String,
    state            LowCardinality(String),
    service          LowCardinality(String),
    product          String,
    version          String,
    risk_color       LowCardinality(String),
    is_cdn_expected  UInt8,
    last_seen        DateTime64(3, 'UTC'),
    -- the latest observation's: the Ciphers report shows a TLS probe of a port only while
    -- it can still reach TLS (a port that spoke TLS once and plain HTTP now had its old
    -- suites shown as current)
    tls_reachable    UInt8 DEFAULT 1
)
ENGINE = ReplacingMergeTree(last_seen)
ORDER BY (target, ip, proto, port)
-- small granules, as findings: phase 2 re-reads the ports of a page's 50 hosts, scattered
-- over the estate when ranked by risk (32 of 74 granules of 8,192 rows at 100,000 hosts)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS port_latest_mv TO port_latest AS
SELECT
    target, ip, proto, port, scan_id, hostname, organization, asset, state, service,
    product, version, risk_color, is_cdn_expected, observed_at AS last_seen, tls_reachable
FROM port_observations;

-- Distinct instances (addresses) per (proto, port) across every scan ever stored.
CREATE TABLE IF NOT EXISTS port_prevalence
(
    proto      LowCardinality(String),
    port       UInt16,
    instances  AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (proto, port);

CREATE MATERIALIZED VIEW IF NOT EXISTS port_prevalence_mv TO port_prevalence AS
SELECT proto, port, uniqExactState(ip) AS instances
FROM port_observations
WHERE state = 'open'
GROUP BY proto, port;

-- Internet prior of prevalence: instances per (proto, port) on a reference population of
-- 100,000 hosts, derived at run time from the user's own nmap-services
-- (stream_processors/prevalence_prior.py); never shipped with portwatch. `source` tags the
-- file digest and formula, so an unchanged file is not reloaded.
CREATE TABLE IF NOT EXISTS internet_prior
(
    proto      LowCardinality(String),
    port       UInt16,
    instances  UInt32,
    source     String
)
ENGINE = ReplacingMergeTree
ORDER BY (proto, port);

-- One row per (scan, target address, shard): lets targets with no open port,
-- interrupted scans and "answers on every port" hosts show in the Summary.
CREATE TABLE IF NOT EXISTS host_scans
(
    scan_id        String,
    shard_id       String,
    target         String,
    hostname       String,
    organization   LowCardinality(String),
    asset          String,
    ip             String,
    started_at     DateTime64(3, 'UTC'),
    finished_at    DateTime64(3, 'UTC'),
    ports_scanned  UInt32,
    open_ports     UInt32,
    status         LowCardinality(String),
    is_tarpit      UInt8,
    note           String,
    -- What the shard covered (HostScan.proto and .ports as first/last arrays), so that
    -- change recovery (history.recover_changes) rebuilds the record whole and closes only
    -- what the shard looked at. At most ARRAY_CAP ranges are kept: a longer list keeps
    -- its first ranges, which covers less, never more.
    proto          LowCardinality(String),
    cover_first    Array(UInt16),
    cover_last     Array(UInt16)
)
ENGINE = ReplacingMergeTree(finished_at)
PARTITION BY toYYYYMM(finished_at)
ORDER BY (target, ip, scan_id, shard_id)
-- Small granules: the Summary's second phase and the per-target page read the shard rows
-- of a few scattered hosts; with 8,192-row granules each host cost a granule per part
-- (100,000 hosts x 90 days: the Summary's scan totals 145 ms, with 256-row granules 45).
SETTINGS index_granularity = 256;

-- The latest scan of every host (any status), and its latest completed one, kept by a
-- materialized view: the reports read this (one row per host) instead of a GROUP BY over
-- every scan ever stored, so their cost follows the estate, not the length of history.
-- max((finished_at, value)) is argMax semantics, insensitive to replays and order (as in
-- findings). (A migration step replaces the view and its query on an older store:
-- stream_processors/store.py, MIGRATIONS[13].)
CREATE TABLE IF NOT EXISTS host_latest
(
    target        String,
    ip            String,
    last_scan     SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    hostname      SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    organization  SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    asset         SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    -- the latest shard row that completed: (epoch, '') while none has
    last_complete SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String))
)
ENGINE = AggregatingMergeTree
ORDER BY (target, ip);

CREATE MATERIALIZED VIEW IF NOT EXISTS host_latest_mv TO host_latest AS
SELECT
    target, ip,
    (finished_at, scan_id) AS last_scan,
    (finished_at, toString(hostname)) AS hostname,
    (finished_at, toString(organization)) AS organization,
    (finished_at, toString(asset)) AS asset,
    if(status = 'completed', (finished_at, scan_id),
       (toDateTime64(0, 3, 'UTC'), '')) AS last_complete
FROM host_scans;

-- scan_id / finished_at: the host's latest scan, whatever its status (the Summary's scan
-- status and time). The host's ports now are those of ports_scan_id, its latest
-- completed scan, and those a later scan (interrupted, or still running) has seen since
-- that one ended (ports_seen_after): an interrupted or running scan closes nothing (its
-- silences prove nothing), but what it sees is open. A host never scanned to the end has
-- its latest scan's ports (ports_seen_after is then never reached).
CREATE VIEW IF NOT EXISTS latest_host_scans AS
SELECT
    target, ip,
    tupleElement(last_scan, 2) AS scan_id,
    tupleElement(last_scan, 1) AS finished_at,
    tupleElement(hostname, 2) AS hostname,
    tupleElement(organization, 2) AS organization,
    tupleElement(asset, 2) AS asset,
    if(tupleElement(last_complete, 2) != '', tupleElement(last_complete, 2),
       tupleElement(last_scan, 2)) AS ports_scan_id,
    if(tupleElement(last_complete, 2) != '', tupleElement(last_complete, 1),
       toDateTime64('2299-12-31 00:00:00', 3, 'UTC')) AS ports_seen_after
FROM host_latest FINAL;

-- TLS: one row per (scan, ip, port) probe attempt: "could not test" is stored.
CREATE TABLE IF NOT EXISTS tls_probes
(
    scan_id       String,
    target        String,
    ip            String,
    port          UInt16,
    status        LowCardinality(String),
    error         String,
    versions      Array(String),
    grade         LowCardinality(String),
    grade_reason  String,
    -- issue 13: how TLS was reached, STARTTLS findings, certificate posture, Mozilla profile
    reached_via           LowCardinality(String),   -- direct / starttls-smtp / ...
    is_upgrade_offered    UInt8,                    -- 0: "no STARTTLS offered" (a finding)
    upgrade_note          String,
    leaf_sha256           String,
    is_chain_trusted      UInt8,
    trust_error           String,
    days_to_expiry        Int32,
    certificate_warnings  Array(String),
    profile               LowCardinality(String),   -- modern / intermediate / old / non-compliant
    profile_version       LowCardinality(String),   -- Mozilla guidelines version, e.g. 5.7
    profile_reasons       Array(String),
    observed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(observed_at)
PARTITION BY toYYYYMM(observed_at)
ORDER BY (target, ip, port, scan_id);

-- The latest probe of every TLS port, kept by a materialized view (as host_latest): the
-- Ciphers report reads one row per port instead of an argMax over every probe ever made.
CREATE TABLE IF NOT EXISTS tls_latest
(
    target        String,
    ip            String,
    port          UInt16,
    last_probe    SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    status        SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    error         SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    versions      SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), Array(String))),
    grade         SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    grade_reason  SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    reached_via           SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    is_upgrade_offered    SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), UInt8)),
    upgrade_note          SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    leaf_sha256           SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    is_chain_trusted      SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), UInt8)),
    trust_error           SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    days_to_expiry        SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), Int32)),
    certificate_warnings  SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), Array(String))),
    profile               SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    profile_version       SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String)),
    profile_reasons       SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), Array(String)))
)
ENGINE = AggregatingMergeTree
ORDER BY (target, ip, port);

CREATE MATERIALIZED VIEW IF NOT EXISTS tls_latest_mv TO tls_latest AS
SELECT
    target, ip, port,
    (observed_at, scan_id) AS last_probe,
    (observed_at, toString(status)) AS status,
    (observed_at, error) AS error,
    (observed_at, versions) AS versions,
    (observed_at, toString(grade)) AS grade,
    (observed_at, grade_reason) AS grade_reason,
    (observed_at, toString(reached_via)) AS reached_via,
    (observed_at, is_upgrade_offered) AS is_upgrade_offered,
    (observed_at, upgrade_note) AS upgrade_note,
    (observed_at, leaf_sha256) AS leaf_sha256,
    (observed_at, is_chain_trusted) AS is_chain_trusted,
    (observed_at, trust_error) AS trust_error,
    (observed_at, days_to_expiry) AS days_to_expiry,
    (observed_at, certificate_warnings) AS certificate_warnings,
    (observed_at, toString(profile)) AS profile,
    (observed_at, toString(profile_version)) AS profile_version,
    (observed_at, profile_reasons) AS profile_reasons
FROM tls_probes;

CREATE VIEW IF NOT EXISTS latest_tls_probes AS
SELECT
    target, ip, port,
    tupleElement(last_probe, 2) AS scan_id,
    tupleElement(last_probe, 1) AS tested_at,
    tupleElement(status, 2) AS status,
    tupleElement(error, 2) AS error,
    tupleElement(versions, 2) AS versions,
    tupleElement(grade, 2) AS grade,
    tupleElement(grade_reason, 2) AS grade_reason,
    tupleElement(reached_via, 2) AS reached_via,
    tupleElement(is_upgrade_offered, 2) AS is_upgrade_offered,
    tupleElement(upgrade_note, 2) AS upgrade_note,
    tupleElement(leaf_sha256, 2) AS leaf_sha256,
    tupleElement(is_chain_trusted, 2) AS is_chain_trusted,
    tupleElement(trust_error, 2) AS trust_error,
    tupleElement(days_to_expiry, 2) AS days_to_expiry,
    tupleElement(certificate_warnings, 2) AS certificate_warnings,
    tupleElement(profile, 2) AS profile,
    tupleElement(profile_version, 2) AS profile_version,
    tupleElement(profile_reasons, 2) AS profile_reasons
FROM tls_latest FINAL;

CREATE TABLE IF NOT EXISTS tls_ciphers
(
    scan_id       String,
    target        String,
    ip            String,
    port          UInt16,
    tls_version   LowCardinality(String),
    iana_name     LowCardinality(String),
    openssl_name  LowCardinality(String),
    strength      LowCardinality(String),
    reason        String,
    kex_group     LowCardinality(String),
    kex_bits      UInt16,
    preference    UInt16,
    observed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(observed_at)
PARTITION BY toYYYYMM(observed_at)
ORDER BY (target, ip, port, scan_id, tls_version, iana_name);

CREATE TABLE IF NOT EXISTS certificates
(
    scan_id              String,
    target               String,
    ip                   String,
    port                 UInt16,
    chain_position       UInt8,
    subject              String,
    sans                 Array(String),
    issuer               String,
    not_before           String,
    not_after            String,
    key_type             LowCardinality(String),
    key_bits             UInt16,
    signature_algorithm  LowCardinality(String),
    is_self_signed       UInt8,
    is_expired           UInt8,
    is_hostname_match    UInt8,
    sha256               String,
    name_check           LowCardinality(String),   -- match / mismatch / no name to check
    days_to_expiry       Int32,
    expiry_warning       LowCardinality(String),   -- expired / expires within 1 day|7|14|30 days
    weak_key             String,
    weak_signature       String,
    observed_at          DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(observed_at)
PARTITION BY toYYYYMM(observed_at)
ORDER BY (target, ip, port, scan_id, chain_position);

-- Change history (stream_processors/changes.py has the rule). One row per event:
-- (target, ip, proto, port, kind, scan_id) is the key, so recomputing or replaying a
-- scan's changes re-inserts identical rows that merge away (read with FINAL).
-- Never pruned: the change log is the history.
CREATE TABLE IF NOT EXISTS changes
(
    event_id          String,
    kind              LowCardinality(String),
    severity          LowCardinality(String),
    target            String,
    hostname          String,
    organization      LowCardinality(String),
    asset             String,
    ip                String,
    proto             LowCardinality(String),
    port              UInt16,
    before            String,
    after             String,
    risk_color        LowCardinality(String),
    service           LowCardinality(String),
    scan_id           String,
    previous_scan_id  String,
    observed_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(observed_at)
PARTITION BY toYYYYMM(observed_at)
ORDER BY (target, ip, proto, port, kind, scan_id);

-- The state change detection compares with: per host, its last completed scan (and
-- whether it answered); per port ever seen on it, its last known state, closed ones
-- included (so a port coming back is "reopened"). Written by the change writer after
-- each completed host scan; ReplacingMergeTree on the scan's finish time, so an older
-- scan replayed late never overwrites a newer state. One row per host / per port: the
-- cost of computing a scan's changes follows the estate, not the number of scans.
CREATE TABLE IF NOT EXISTS host_state
(
    target        String,
    ip            String,
    scan_id       String,
    finished_at   DateTime64(3, 'UTC'),
    is_reachable  UInt8,
    -- changes.fingerprint of its open ports: an unchanged host skips its port states
    fingerprint   String
)
ENGINE = ReplacingMergeTree(finished_at)
ORDER BY (target, ip);

CREATE TABLE IF NOT EXISTS port_state
(
    target          String,
    ip              String,
    proto           LowCardinality(String),
    port            UInt16,
    is_open         UInt8,
    service         LowCardinality(String),
    product         String,
    version         String,
    risk_color      LowCardinality(String),
    is_cdn_expected UInt8,
    tls_status      LowCardinality(String),
    tls_versions    Array(String),
    weak_suites     Array(String),
    tls_grade       LowCardinality(String),
    cert_sha256     String,
    cert_not_after  DateTime64(3, 'UTC'),
    scan_id         String,
    changed_at      DateTime64(3, 'UTC'),
    first_seen      DateTime64(3, 'UTC'),
    updated_at      DateTime64(3, 'UTC'),
    favicon         String,                   -- Shodan favicon hash as text, '' none
    jarm            String,                   -- JARM TLS fingerprint, '' not tested
    -- 1: its identification never finished (Ctrl-C, an error): the next full one takes
    -- its place with no service/product event (layout 21)
    is_incomplete   UInt8 DEFAULT 0,
    -- a UDP port's last word: 1 it answered, 2 it sent nothing back (open|filtered,
    -- unconfirmed: scored nothing); 0 TCP, or a row written before layout 22 (unknown:
    -- its next scan says nothing of it). A change between 1 and 2 is a risk event.
    udp_reply       UInt8 DEFAULT 0
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (target, ip, proto, port);

-- Ports a host's completed scan did not see that its change state still holds open: not
-- covered by it (a scan of `--ports 22,80` leaves 443 open), or missed and answering the
-- closure re-probe. Every scan's such ports, as the change writer writes them with the
-- host's state, only when there are some (a scan that sees every open port writes none).
-- The score after every scan (history/target_scores.sql, web/risk_history.sql) counts
-- them at the scan that carried them, so a narrower scan's point is the score the
-- Summary showed after it. Pruned with the scans' raw rows (prune --older-than).
CREATE TABLE IF NOT EXISTS carried_history
(
    target       String,
    ip           String,
    scan_id      String,
    proto        LowCardinality(String),
    port         UInt16,
    finished_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(finished_at)
PARTITION BY toYYYYMM(finished_at)
ORDER BY (target, ip, scan_id, proto, port);

-- Per port, the latest scan that carried it (kept from carried_history by its view). The
-- reports count a port while its row's scan is the host's ports scan
-- (latest_host_scans.ports_scan_id), with the port's latest observation (port_latest): a
-- narrower scan hides nothing the change log still calls open, and once a later scan is
-- the ports scan the row no longer counts (no FINAL needed: an older version names an
-- older scan). One row per port ever carried: bounded by the estate, not by scans, so
-- the reports' lookup does not grow with history.
CREATE TABLE IF NOT EXISTS ports_carried
(
    target       String,
    ip           String,
    proto        LowCardinality(String),
    port         UInt16,
    scan_id      String,
    finished_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(finished_at)
ORDER BY (target, ip, proto, port);

CREATE MATERIALIZED VIEW IF NOT EXISTS ports_carried_mv TO ports_carried AS
SELECT target, ip, proto, port, scan_id, finished_at FROM carried_history;

-- The risk chart's rows (schemas/web/risk_history.sql, risk_days.sql): per host scan,
-- its raw score (the Summary's formula over what the scan saw and carried) on the day its
-- last shard ended, and per day and organization the sum and maximum of the scores of
-- each address's last scan that day. Kept by stream_processors/risk_days.py from the
-- host scans risk_dirty names (at a scan's end, when the sink's hold empties, and when the
-- web app starts), so the chart reads the window's days, never the raw observations: its
-- cost does not grow with their size. Keyed by day first: a refresh rewrites the days it
-- touched and reads no other (FINAL prunes by the key). A later shard that ends on the
-- next day moves a scan there: its row on the earlier day is deleted (is_deleted). Not
-- pruned with the raw rows (the chart keeps its history).
CREATE TABLE IF NOT EXISTS scan_scores
(
    target        String,
    ip            String,
    scan_id       String,
    day           Date,
    finished_at   DateTime64(3, 'UTC'),
    organization  LowCardinality(String),
    hostname      String,
    asset         String,
    raw_score     UInt32,
    computed_at   DateTime64(3, 'UTC'),
    is_deleted    UInt8 DEFAULT 0  -- 1: the scan moved to a later day (a later shard)
)
ENGINE = ReplacingMergeTree(computed_at, is_deleted)
PARTITION BY toYYYYMM(day)
ORDER BY (day, target, ip, scan_id);

-- The same rows keyed by host (kept by its view): a target's chart reads its hosts' rows
-- by the key, not a row per day of the whole estate.
CREATE TABLE IF NOT EXISTS host_scan_scores AS scan_scores
ENGINE = ReplacingMergeTree(computed_at, is_deleted)
PARTITION BY toYYYYMM(day)
ORDER BY (target, ip, day, scan_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS host_scan_scores_mv TO host_scan_scores AS
SELECT target, ip, scan_id, day, finished_at, organization, hostname, asset, raw_score,
       computed_at, is_deleted
FROM scan_scores;

CREATE TABLE IF NOT EXISTS risk_days
(
    day           Date,
    organization  LowCardinality(String),
    addresses     UInt32,
    score_sum     Float64,
    score_max     Float64,
    refreshed_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(refreshed_at)
ORDER BY (day, organization);

-- Host scans whose rows were stored since the last refresh of the rows above: every
-- shard record, every observation and every carried port notes its scan, so a finding
-- stored after a refresh (the sink stores a host's findings and its record in any
-- order) has its scan computed again by the next one.
CREATE TABLE IF NOT EXISTS risk_dirty
(
    target    String,
    ip        String,
    scan_id   String,
    noted_at  DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(noted_at)
ORDER BY (target, ip, scan_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS risk_dirty_mv TO risk_dirty AS
SELECT target, ip, scan_id, now64(3, 'UTC') AS noted_at FROM host_scans;

CREATE MATERIALIZED VIEW IF NOT EXISTS risk_dirty_observations_mv TO risk_dirty AS
SELECT DISTINCT target, ip, scan_id, now64(3, 'UTC') AS noted_at FROM port_observations;

CREATE MATERIALIZED VIEW IF NOT EXISTS risk_dirty_carried_mv TO risk_dirty AS
SELECT DISTINCT target, ip, scan_id, now64(3, 'UTC') AS noted_at FROM carried_history;

-- The layout version of this store (see SCHEMA_VERSION in stream_processors/store.py).
CREATE TABLE IF NOT EXISTS schema_version
(
    version  UInt32
)
ENGINE = ReplacingMergeTree
ORDER BY version;

-- Alert delivery log ("outbox"): one row per (rule, channel, change event) a rule
-- selected, in one of three states: pending (queued or waiting for a retry), sent,
-- failed (gave up after the last attempt; kept with its error). `revision` orders the
-- states of one key without clocks: a submitted row is 0 (so a replayed submission can
-- never undo a later state), attempt N writes 4N+1 (retry), 4N+2 (failed), 4N+3 (sent).
CREATE TABLE IF NOT EXISTS alert_outbox
(
    rule             String,
    channel          String,
    event_id         String,
    event_json       String,
    state            LowCardinality(String),
    attempts         UInt16,
    last_error       String,
    created_at       DateTime64(3, 'UTC'),
    next_attempt_at  DateTime64(3, 'UTC'),
    sent_at          DateTime64(3, 'UTC'),
    revision         UInt64,
    -- X-Portwatch-Delivery of the message its first attempt went out in ('' = not yet):
    -- a retry is that message again, same events, same id
    delivery_id      String
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (rule, channel, event_id);

-- Who may send attempt N of a delivery: every claim is inserted with the insert
-- deduplication token (rule, channel, event_id, attempt), so exactly one claim per
-- attempt lands whatever the number of workers; the one whose row landed sends.
CREATE TABLE IF NOT EXISTS alert_claims
(
    rule        String,
    channel     String,
    event_id    String,
    attempt     UInt16,
    owner       String,
    claimed_at  DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (rule, channel, event_id, attempt)
SETTINGS non_replicated_deduplication_window = 100000;

-- Accepted risks: TARGET (port 0 = every port of it) or TARGET:PORT/PROTO, with who,
-- when, why and until when (1970 = no expiry). service/product/version are the port's
-- identification when it was accepted: the acceptance ends when they change.
CREATE TABLE IF NOT EXISTS accepted_risks
(
    target       String,
    proto        LowCardinality(String),
    port         UInt16,
    note         String,
    accepted_by  String,
    accepted_at  DateTime64(3, 'UTC'),
    until        DateTime64(3, 'UTC'),
    service      String,
    product      String,
    version      String,
    is_removed   UInt8,
    revision     UInt64
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (target, proto, port);

-- Who runs a watch entry's cron slot: two watchers on one ClickHouse server (two
-- `watch --once` CronJobs that overlap, a second machine) must not both scan it, nor
-- scan an entry whose earlier slot another still runs. Each claim is inserted with the
-- insert deduplication token (entry, slot, attempt), so one claim per attempt lands; the
-- watcher whose row landed runs the slot and renews it (a row of the same attempt) every
-- minute. claimed_at is the server's clock. A claim is over once its owner recorded a run
-- (watch_runs.owner), its process on this host is gone, or it was not renewed for 5
-- minutes (portwatch/alerts/schedule.py claim_slot).
CREATE TABLE IF NOT EXISTS watch_claims
(
    entry       String,
    slot        DateTime64(3, 'UTC'),
    attempt     UInt16,
    owner       String,
    claimed_at  DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (entry, slot, attempt)
SETTINGS non_replicated_deduplication_window = 100000;

-- Schedule runs of `portwatch watch`: one row per (entry, cron slot) that ran, so a
-- restart neither repeats a slot nor runs every missed one.
CREATE TABLE IF NOT EXISTS watch_runs
(
    entry        String,
    slot         DateTime64(3, 'UTC'),
    started_at   DateTime64(3, 'UTC'),
    finished_at  DateTime64(3, 'UTC'),
    scan_id      String,
    status       LowCardinality(String),
    note         String,
    owner        String  -- the watcher that ran it (its claim: watch_claims)
)
ENGINE = ReplacingMergeTree(finished_at)
ORDER BY (entry, slot);
