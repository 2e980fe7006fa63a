-- List report: every open port of every target.
-- Columns: target, address, port/proto, service, product, version, CPE, HTTP title /
-- redirect / Server / X-Powered-By, favicon hash (Shodan's), JARM, risk colour,
-- prevalence bucket (the larger of the estate's count and the Internet prior, with
-- its source: stream_processors/prevalence_prior.py), CDN verdict, first detected,
-- last seen; how TLS was reached and the leaf certificate's days left (issue 13).
-- By default only ports seen in the host's latest scan ("current"); history = 1
-- adds ports no longer seen. Filters: empty string / 0 = no filter.
-- Sorting (web pages and API): {sort} names one allow-listed key ('' = by target);
-- {direction} is 'asc' (or '') / 'desc'. Any other value sorts by target: the key is
-- chosen by bound values, never formatted into the SQL (see ORDER BY below); ties
-- always fall back to target, address, protocol, port. The report's columns do not
-- change with the sort.
WITH
    -- one row per host, kept by a materialized view (ddl.sql host_latest): not a
    -- GROUP BY over every scan ever stored
    latest_scan AS (
        SELECT target, ip, scan_id FROM latest_host_scans
    ),
    prevalence AS (
        SELECT proto, port, uniqExactMerge(instances) AS instances
        FROM port_prevalence GROUP BY proto, port
    ),
    -- Accepted risks (`portwatch accept`) still in force; a port's acceptance also ends
    -- when its service/product/version differ from what was accepted (checked below).
    accepted AS (
        SELECT target, proto, port, note, accepted_by, until, service, product, version
        FROM accepted_risks FINAL
        WHERE is_removed = 0 AND (until = toDateTime64(0, 3, 'UTC') OR until > now64(3))
    ),
    -- --history: when each port no longer seen was found closed (port_state, kept by the
    -- change writer); read only when history is asked (the filter folds to false).
    closed AS (
        SELECT target, ip, proto, port, changed_at AS closed_at
        FROM port_state FINAL
        WHERE {history:UInt8} = 1 AND is_open = 0
    ),
    -- Internet prior (stream_processors/prevalence_prior.py): {no_prior} = 1 turns it off
    nmap_prior AS (
        SELECT proto, port, max(instances) AS internet_count
        FROM internet_prior GROUP BY proto, port
    )
SELECT
    f.target AS target,
    f.ip AS ip,
    f.hostname AS hostname,
    f.asset AS asset,
    f.organization AS organization,
    f.port AS port,
    f.proto AS proto,
    f.state AS state,
    f.service AS service,
    f.product AS product,
    f.version AS version,
    f.extra_info AS extra_info,
    f.cpe AS cpe,
    f.http_title AS http_title,
    f.http_redirect AS http_redirect,
    f.http_server AS http_server,
    f.http_powered_by AS http_powered_by,
    f.favicon_mmh3 AS favicon_mmh3,
    f.jarm AS jarm,
    f.risk_color AS risk_color,
    f.risk_reason AS risk_reason,
    prevalence.instances AS instances,
    if({no_prior:UInt8} = 1, toUInt64(0), toUInt64(nmap_prior.internet_count))
        AS internet_instances,
    -- the larger of the two counts decides the bucket, and says which (ties: estate)
    greatest(toUInt64(prevalence.instances), internet_instances) AS prevalence_instances,
    multiIf(prevalence_instances > 3000, 'very common',
            prevalence_instances >= 500, 'somewhat common',
            prevalence_instances >= 50, 'less common',
            'rare') AS prevalence,
    if(internet_instances > prevalence.instances, 'Internet', 'estate') AS prevalence_source,
    f.cdn_provider AS cdn_provider,
    f.is_cdn_expected AS is_cdn_expected,
    f.is_tls AS is_tls,
    f.tls_grade AS tls_grade,
    f.tls_via AS tls_via,
    f.cert_not_after AS cert_not_after,
    -- whole days left on the leaf certificate, counted now (not at scan time)
    if(f.cert_not_after = '', NULL,
       intDiv(toUnixTimestamp64Milli(parseDateTime64BestEffortOrNull(f.cert_not_after, 3, 'UTC'))
              - toUnixTimestamp64Milli(now64(3)), 86400000)) AS cert_days_left,
    f.banner AS banner,
    f.method AS method,
    f.first_seen AS first_seen,
    f.last_seen AS last_seen,
    (latest_scan.scan_id = '' OR f.last_scan_id = latest_scan.scan_id) AS is_current,
    (acc_port.target != ''
     AND ((acc_port.service = '' AND acc_port.product = '' AND acc_port.version = '')
          OR (acc_port.service = f.service AND acc_port.product = f.product
              AND acc_port.version = f.version))) AS is_port_accepted,
    (is_port_accepted OR acc_host.target != '') AS is_accepted,
    if(is_port_accepted, acc_port.note, acc_host.note) AS accepted_note,
    if(is_port_accepted, acc_port.accepted_by, acc_host.accepted_by) AS accepted_by,
    if(is_port_accepted, acc_port.until, acc_host.until) AS accepted_until,
    if(is_current, 'open',
       if(closed.closed_at IS NULL OR closed.closed_at = toDateTime64(0, 3, 'UTC'),
          'not seen in the latest scan',
          concat('closed ', formatDateTime(closed.closed_at, '%Y-%m-%d %H:%i:%S')))) AS status
FROM current_findings AS f
LEFT JOIN latest_scan ON latest_scan.target = f.target AND latest_scan.ip = f.ip
-- (nmap_prior before prevalence: ClickHouse's analyzer resolves the other order wrongly)
LEFT JOIN nmap_prior ON nmap_prior.proto = f.proto AND nmap_prior.port = f.port
LEFT JOIN prevalence ON prevalence.proto = f.proto AND prevalence.port = f.port
LEFT ANY JOIN accepted AS acc_port
    ON (acc_port.target = f.ip OR acc_port.target = lower(f.target))
   AND acc_port.proto = f.proto AND acc_port.port = f.port
LEFT ANY JOIN (SELECT * FROM accepted WHERE port = 0) AS acc_host
    ON (acc_host.target = f.ip OR acc_host.target = lower(f.target))
LEFT JOIN closed ON closed.target = f.target AND closed.ip = f.ip AND closed.proto = f.proto
                AND closed.port = f.port
WHERE ({history:UInt8} = 1 OR is_current)
  AND TARGET_MATCHES(f)
  AND ({org:String} = '' OR lower(f.organization) = lower({org:String}))
  AND ({product:String} = '' OR lower(f.product) = lower({product:String}))
  AND ({version:String} = '' OR lower(f.version) = lower({version:String}))
  AND ({port:UInt16} = 0 OR f.port = {port:UInt16})
  AND ({color:String} = '' OR f.risk_color = {color:String})
  AND ({prevalence:String} = '' OR prevalence = {prevalence:String})
-- Each key is its own typed term that folds to a constant unless chosen, so a page
-- computes only its own key (string keys over 100,000 rows cost ~150 ms more).
ORDER BY
    if({sort:String} = 'port' AND {direction:String} != 'desc', port, 0) ASC,
    if({sort:String} = 'port' AND {direction:String} = 'desc', port, 0) DESC,
    if({sort:String} = 'service' AND {direction:String} != 'desc', lower(service), '') ASC,
    if({sort:String} = 'service' AND {direction:String} = 'desc', lower(service), '') DESC,
    if({sort:String} = 'product' AND {direction:String} != 'desc',
       lower(concat(product, ' ', version)), '') ASC,
    if({sort:String} = 'product' AND {direction:String} = 'desc',
       lower(concat(product, ' ', version)), '') DESC,
    if({sort:String} = 'risk' AND {direction:String} != 'desc',
       indexOf(['green', 'yellow', 'red'], risk_color), 0) ASC,
    if({sort:String} = 'risk' AND {direction:String} = 'desc',
       indexOf(['green', 'yellow', 'red'], risk_color), 0) DESC,
    if({sort:String} = 'prevalence' AND {direction:String} != 'desc', prevalence_instances, 0) ASC,
    if({sort:String} = 'prevalence' AND {direction:String} = 'desc', prevalence_instances, 0) DESC,
    if({sort:String} = 'first_seen' AND {direction:String} != 'desc',
       toUnixTimestamp64Milli(first_seen), 0) ASC,
    if({sort:String} = 'first_seen' AND {direction:String} = 'desc',
       toUnixTimestamp64Milli(first_seen), 0) DESC,
    if({sort:String} = 'last_seen' AND {direction:String} != 'desc',
       toUnixTimestamp64Milli(last_seen), 0) ASC,
    if({sort:String} = 'last_seen' AND {direction:String} = 'desc',
       toUnixTimestamp64Milli(last_seen), 0) DESC,
    if({sort:String} = 'organization' AND {direction:String} != 'desc',
       lower(organization), '') ASC,
    if({sort:String} = 'organization' AND {direction:String} = 'desc',
       lower(organization), '') DESC,
    target, ip, proto, port
LIMIT {limit:UInt64} OFFSET {offset:UInt64}
