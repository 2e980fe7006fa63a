-- portwatch storage model (DESIGN.md "Storage model"). One DDL for chdb and a
-- ClickHouse server: the store runs these statements unchanged, in order, in the
-- store's database. Every statement is idempotent (IF NOT EXISTS).
--
-- Idempotent writes: every raw table is a ReplacingMergeTree whose sorting key
-- contains the dedup key (scan_id, ip, proto, port [, ...]); replaying a Kafka
-- partition re-inserts identical rows that merge away, and report SQL never
-- counts raw rows without de-duplicating them (uniqExact / FINAL / GROUP BY key).
-- The materialized views only keep min / max / argMax / uniqExact states, which
-- are insensitive to duplicates: a replayed block cannot move first_seen.

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
    cdn_provider     LowCardinality(String),
    cdn_source       String,
    is_cdn_expected  UInt8,
    risk_color       LowCardinality(String),
    risk_reason      String,
    observed_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(observed_at)
ORDER BY (target, ip, proto, port, scan_id);

-- Current state per (target, ip, proto, port): first_seen = min, last_seen = max,
-- latest identification = argMax by observation time. "First detected" lives here.
CREATE TABLE IF NOT EXISTS findings
(
    target        String,
    ip            String,
    proto         LowCardinality(String),
    port          UInt16,
    first_seen    SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen     SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    last_scan_id  AggregateFunction(argMax, String, DateTime64(3, 'UTC')),
    latest        AggregateFunction(argMax, Tuple(
                      hostname String, organization String, asset String, state String,
                      service String, product String, version String, extra_info String,
                      cpe String, banner String, method String, is_tls UInt8,
                      tls_grade String, cdn_provider String, cdn_source String,
                      is_cdn_expected UInt8, risk_color String, risk_reason String),
                      DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (target, ip, proto, port);

CREATE MATERIALIZED VIEW IF NOT EXISTS findings_mv TO findings AS
SELECT
    target, ip, proto, port,
    min(observed_at) AS first_seen,
    max(observed_at) AS last_seen,
    argMaxState(scan_id, observed_at) AS last_scan_id,
    argMaxState(CAST(tuple(
        hostname, toString(organization), asset, toString(state), toString(service), product,
        version, extra_info, cpe, banner, method, is_tls, toString(tls_grade),
        toString(cdn_provider), cdn_source, is_cdn_expected, toString(risk_color), risk_reason),
        'Tuple(hostname String, organization String, asset String, state String, service String, product String, version String, extra_info String, cpe String, banner String, method String, is_tls UInt8, tls_grade String, cdn_provider String, cdn_source String, is_cdn_expected UInt8, risk_color String, risk_reason String)'),
        observed_at) AS latest
FROM port_observations
GROUP BY target, ip, proto, port;

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
    note           String
)
ENGINE = ReplacingMergeTree(finished_at)
ORDER BY (target, ip, scan_id, shard_id);

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
    observed_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(observed_at)
ORDER BY (target, ip, port, scan_id);

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
    observed_at          DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(observed_at)
ORDER BY (target, ip, port, scan_id, chain_position);
