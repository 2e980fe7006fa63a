-- List report: every open port of every target.
-- Columns: target, address, port/proto, service, product, version, CPE, HTTP title /
-- redirect / Server / X-Powered-By, favicon hash (Shodan's), JARM, risk colour,
-- prevalence bucket, CDN verdict, first detected, last seen.
-- By default only ports seen in the host's latest scan ("current"); history = 1
-- adds ports no longer seen. Filters: empty string / 0 = no filter.
-- Sorting (web pages and API): {sort} names one allow-listed key ('' = by target);
-- {direction} is 'asc' (or '') / 'desc'. Any other value sorts by target: the key is
-- chosen by bound values, never formatted into the SQL (see ORDER BY below); ties
-- always fall back to target, address, protocol, port. The report's columns do not
-- change with the sort.
WITH
    latest_scan AS (
        SELECT target, ip, argMax(scan_id, finished_at) AS scan_id
        FROM host_scans GROUP BY target, ip
    ),
    prevalence AS (
        SELECT proto, port, uniqExactMerge(instances) AS instances
        FROM port_prevalence GROUP BY proto, port
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
    multiIf(prevalence.instances > 3000, 'very common',
            prevalence.instances >= 500, 'somewhat common',
            prevalence.instances >= 50, 'less common',
            'rare') AS prevalence,
    f.cdn_provider AS cdn_provider,
    f.is_cdn_expected AS is_cdn_expected,
    f.is_tls AS is_tls,
    f.tls_grade AS tls_grade,
    f.banner AS banner,
    f.method AS method,
    f.first_seen AS first_seen,
    f.last_seen AS last_seen,
    (latest_scan.scan_id = '' OR f.last_scan_id = latest_scan.scan_id) AS is_current
FROM current_findings AS f
LEFT JOIN latest_scan ON latest_scan.target = f.target AND latest_scan.ip = f.ip
LEFT JOIN prevalence ON prevalence.proto = f.proto AND prevalence.port = f.port
WHERE ({history:UInt8} = 1 OR is_current)
  AND ({target:String} = '' OR f.target = {target:String} OR f.ip = {target:String}
       OR f.hostname = {target:String})
  AND ({org:String} = '' OR f.organization = {org:String})
  AND ({product:String} = '' OR lower(f.product) = lower({product:String}))
  AND ({version:String} = '' OR f.version = {version:String})
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
    if({sort:String} = 'prevalence' AND {direction:String} != 'desc', instances, 0) ASC,
    if({sort:String} = 'prevalence' AND {direction:String} = 'desc', instances, 0) DESC,
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
