-- List report: every open port of every target.
-- Columns: target, address, port/proto, service, product, version, risk colour,
-- prevalence bucket, CDN verdict, first detected, last seen.
-- By default only ports seen in the host's latest scan ("current"); history = 1
-- adds ports no longer seen. Filters: empty string / 0 = no filter.
-- Sorting (web pages and API): {sort} names one allow-listed key ('' = by target);
-- {direction} is 'asc' (or '') / 'desc'. Any other value sorts by target: the key is
-- chosen with multiIf over bound values, never formatted into the SQL. Every key is
-- rendered as a string that sorts like the value (zero-padded numbers, ISO times);
-- ties always fall back to target, address, protocol, port. The key is an ORDER BY
-- alias only: the report's columns do not change.
WITH
    cur AS (
        SELECT target, ip, proto, port,
               min(first_seen) AS first_seen, max(last_seen) AS last_seen,
               argMaxMerge(last_scan_id) AS last_scan_id, argMaxMerge(latest) AS l
        FROM findings
        GROUP BY target, ip, proto, port
    ),
    latest_scan AS (
        SELECT target, ip, argMax(scan_id, finished_at) AS scan_id
        FROM host_scans GROUP BY target, ip
    ),
    prevalence AS (
        SELECT proto, port, uniqExactMerge(instances) AS instances
        FROM port_prevalence GROUP BY proto, port
    )
SELECT
    cur.target AS target,
    cur.ip AS ip,
    cur.l.hostname AS hostname,
    cur.l.asset AS asset,
    cur.l.organization AS organization,
    cur.port AS port,
    cur.proto AS proto,
    cur.l.state AS state,
    cur.l.service AS service,
    cur.l.product AS product,
    cur.l.version AS version,
    cur.l.extra_info AS extra_info,
    cur.l.cpe AS cpe,
    cur.l.risk_color AS risk_color,
    cur.l.risk_reason AS risk_reason,
    prevalence.instances AS instances,
    multiIf(prevalence.instances > 3000, 'very common',
            prevalence.instances >= 500, 'somewhat common',
            prevalence.instances >= 50, 'less common',
            'rare') AS prevalence,
    cur.l.cdn_provider AS cdn_provider,
    cur.l.is_cdn_expected AS is_cdn_expected,
    cur.l.is_tls AS is_tls,
    cur.l.tls_grade AS tls_grade,
    cur.l.banner AS banner,
    cur.l.method AS method,
    cur.first_seen AS first_seen,
    cur.last_seen AS last_seen,
    (latest_scan.scan_id = '' OR cur.last_scan_id = latest_scan.scan_id) AS is_current
FROM cur
LEFT JOIN latest_scan ON latest_scan.target = cur.target AND latest_scan.ip = cur.ip
LEFT JOIN prevalence ON prevalence.proto = cur.proto AND prevalence.port = cur.port
WHERE ({history:UInt8} = 1 OR is_current)
  AND ({target:String} = '' OR cur.target = {target:String} OR cur.ip = {target:String}
       OR cur.l.hostname = {target:String})
  AND ({org:String} = '' OR cur.l.organization = {org:String})
  AND ({product:String} = '' OR lower(cur.l.product) = lower({product:String}))
  AND ({version:String} = '' OR cur.l.version = {version:String})
  AND ({port:UInt16} = 0 OR cur.port = {port:UInt16})
  AND ({color:String} = '' OR cur.l.risk_color = {color:String})
  AND ({prevalence:String} = '' OR prevalence = {prevalence:String})
ORDER BY
    if({direction:String} = 'desc', '',
       multiIf({sort:String} = 'port', leftPad(toString(port), 5, '0'),
               {sort:String} = 'service', lower(service),
               {sort:String} = 'product', lower(concat(product, ' ', version)),
               {sort:String} = 'risk', toString(indexOf(['green', 'yellow', 'red'], risk_color)),
               {sort:String} = 'prevalence', leftPad(toString(instances), 12, '0'),
               {sort:String} = 'first_seen', toString(first_seen),
               {sort:String} = 'last_seen', toString(last_seen),
               {sort:String} = 'organization', lower(organization),
               '') AS sort_key) ASC,
    if({direction:String} = 'desc', sort_key, '') DESC,
    target, ip, proto, port
LIMIT {limit:UInt64} OFFSET {offset:UInt64}
