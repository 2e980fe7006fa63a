-- List report: every open port of every target.
-- Columns: target, address, port/proto, service, product, version, CPE, HTTP title /
-- redirect / Server / X-Powered-By, favicon hash (Shodan's), JARM, risk colour,
-- prevalence bucket (the larger of the estate's count and the Internet prior, with
-- its source: stream_processors/prevalence_prior.py), CDN verdict, first detected,
-- last seen; how TLS was reached and the leaf certificate's days left (issue 13).
-- By default only ports seen in the host's latest scan ("current"); history = 1
-- adds ports no longer seen (their state 'closed' or 'not seen', status says when).
-- Filters: empty string / 0 = no filter.
-- Sorting (web pages and API): {sort} names one allow-listed key ('' = by target);
-- {direction} is 'asc' (or '') / 'desc'. Any other value sorts by target: the key is
-- chosen by bound values, never formatted into the SQL (see ORDER BY below); ties
-- always fall back to target, address, protocol, port. The report's columns do not
-- change with the sort.
--
-- Two phases (issue: pages at 100,000 hosts). `page` chooses the page's ports from
-- port_latest (ddl.sql: the few columns the filters and sorts read, plain columns, one
-- cheap FINAL) with its ORDER BY ... LIMIT/OFFSET; only then are the report's ~45 columns
-- and joins computed, for those ports only, from current_findings (whose FINAL merges
-- one max(tuple) per column: materializing every column of 300,000 ports before the
-- LIMIT took 1.7-5 s a page). The key set is on findings' sorting key, so with
-- optimize_move_to_prewhere_if_final (SETTINGS at the end: it only ever moves conditions
-- on the sorting key under FINAL) the read skips every granule without a page row.
-- Without a limit (the web's count, Grafana) `page` is every matching port: same rows.
WITH
    -- one row per host, kept by a materialized view (ddl.sql host_latest): not a
    -- GROUP BY over every scan ever stored
    latest_scan AS (
        -- the scan whose ports are the host's ports now: its latest completed one
        -- (ddl.sql latest_host_scans: an interrupted or running rescan closes nothing)
        -- and the host's organization: its latest scan's, as the Summary's (a port
        -- kept the one of the scan that last saw it: after a rescan of some ports under
        -- another --org, the List and the Summary disagreed). So are its hostname and
        -- asset, shown and matched by --target (an inventory that renamed an asset hid
        -- the ports a narrower rescan did not see again from --target <new name>, while
        -- the Summary counted them: a review)
        SELECT target, ip, ports_scan_id, ports_seen_after, organization, hostname, asset
        FROM latest_host_scans
    ),
    prevalence AS (
        SELECT proto, port, uniqExactMerge(instances) AS instances
        FROM port_prevalence GROUP BY proto, port
    ),
    -- Internet prior (stream_processors/prevalence_prior.py): {no_prior} = 1 turns it off
    nmap_prior AS (
        SELECT proto, port, max(instances) AS internet_count
        FROM internet_prior GROUP BY proto, port
    ),
    -- (proto, port) -> the larger of the estate's and the Internet's count, as one sorted
    -- array of pairs (for phase 1's transform, which reads it twice: keys and values; two
    -- evaluations of a groupArray need not agree on the order, a sorted array does)
    prevalence_counts AS (
        SELECT arraySort(groupArray((concat(proto, '/', toString(port)),
                                     greatest(estate, internet)))) AS counts
        FROM (
            SELECT proto, port, max(estate) AS estate, max(internet) AS internet
            FROM (
                SELECT proto, port, toUInt64(instances) AS estate, toUInt64(0) AS internet
                FROM prevalence
                UNION ALL
                SELECT proto, port, toUInt64(0),
                       if({no_prior:UInt8} = 1, toUInt64(0), toUInt64(internet_count))
                FROM nmap_prior
            )
            -- a scalar subquery runs even where its value is unused: empty unless asked
            -- (merging the uniqExact states costs ~100 ms)
            WHERE {sort:String} = 'prevalence' OR {prevalence:String} != ''
            GROUP BY proto, port
        )
    ),
    -- first detected, per port, for the first_seen sort only (empty otherwise: the filter
    -- folds); sorted key -> value pairs for transform, since a join over every port cost
    -- ~170 ms even when empty. The key is injective: address, protocol and port hold no '/'.
    first_seen_of AS (
        SELECT arraySort(groupArray((concat(ip, '/', proto, '/', toString(port), '/', target),
                                     toUnixTimestamp64Milli(first_seen)))) AS first_seen_of
        FROM current_findings
        WHERE {sort:String} = 'first_seen'
    ),
    -- Phase 1: the page's ports and their sort values. The sort is one number (negated
    -- for 'desc') and one text, each a chain of if()s on bound values that folds to a
    -- constant unless its key is chosen, so a page computes only its own key (a multiIf
    -- does not fold: it read every sortable column, +0.9 s).
    page AS (
        SELECT f.target AS target, f.ip AS ip, f.proto AS proto, f.port AS port,
               -- prevalence only when the filter or the sort asks for it, looked up in
               -- a hash table of the (proto, port) counts (two joins over every port cost
               -- ~150 ms even when unused); missing counts are 0, as in phase 2's joins
               if({sort:String} = 'prevalence' OR {prevalence:String} != '',
                  transform(concat(f.proto, '/', toString(f.port)),
                            (SELECT arrayMap(x -> x.1, counts) FROM prevalence_counts),
                            (SELECT arrayMap(x -> x.2, counts) FROM prevalence_counts),
                            toUInt64(0)),
                  toUInt64(0)) AS prevalence_instances,
               multiIf(prevalence_instances > 3000, 'very common',
                       prevalence_instances >= 500, 'somewhat common',
                       prevalence_instances >= 50, 'less common',
                       'rare') AS prevalence_bucket,
               toInt64(if({sort:String} = 'port', toInt64(f.port),
                   if({sort:String} = 'risk', toInt64(indexOf(['green', 'yellow', 'red'], f.risk_color)),
                   if({sort:String} = 'prevalence', toInt64(prevalence_instances),
                   -- first_seen is a min over every observation: only findings has it
                   if({sort:String} = 'first_seen', transform(
                       concat(f.ip, '/', f.proto, '/', toString(f.port), '/', f.target),
                       (SELECT arrayMap(x -> x.1, first_seen_of) FROM first_seen_of),
                       (SELECT arrayMap(x -> x.2, first_seen_of) FROM first_seen_of),
                       toInt64(0)),
                   if({sort:String} = 'last_seen', toUnixTimestamp64Milli(f.last_seen),
                   toInt64(0)))))))
               * if({direction:String} = 'desc', -1, 1) AS sort_number,
               if({sort:String} = 'service', lowerUTF8(f.service),
                   if({sort:String} = 'product', lowerUTF8(concat(f.product, ' ', f.version)),
                   if({sort:String} = 'organization', lowerUTF8(toString(
                       if(page_scan.target = '', f.organization, page_scan.organization))),
                   if({sort:String} = 'target', ADDRESS_TEXT(f.target), ''))))
                   AS sort_text
        FROM port_latest AS f FINAL
        LEFT JOIN latest_scan AS page_scan ON page_scan.target = f.target AND page_scan.ip = f.ip
        -- "current" (schemas._CURRENT), as is_current below
        WHERE ({history:UInt8} = 1 OR IS_CURRENT(f.scan_id, page_scan))
          AND HOST_TARGET_MATCHES(f)
          AND ({org:String} = ''
               OR lowerUTF8(if(page_scan.target = '', f.organization, page_scan.organization))
                  = lowerUTF8({org:String}))
          AND ({product:String} = '' OR lowerUTF8(f.product) = lowerUTF8({product:String}))
          -- '-' is the version of a product that gave none (the Products page's link),
          -- or gave '-' itself (one Products row: products.sql)
          AND ({version:String} = ''
               OR ({version:String} = '-' AND f.version = '')
               OR lowerUTF8(f.version) = lowerUTF8({version:String}))
          AND ({port:UInt16} = 0 OR f.port = {port:UInt16})
          -- one host and protocol, exactly: the Summary's and the Changes page's
          -- drill-downs (the target filter above is a search: a CIDR or an address
          -- matches other targets' hosts there; a target as written names every address
          -- it resolved to)
          AND ({exact_target:String} = '' OR f.target = {exact_target:String})
          AND ({ip:String} = '' OR f.ip = {ip:String})
          AND ({proto:String} = '' OR f.proto = {proto:String})
          AND ({color:String} = '' OR f.risk_color = {color:String})
          AND ({prevalence:String} = '' OR prevalence_bucket = {prevalence:String})
        ORDER BY sort_number,
                 if({direction:String} = 'desc', '', sort_text) ASC,
                 if({direction:String} = 'desc', sort_text, '') DESC,
                 ADDRESS_ORDER(target), ADDRESS_ORDER(ip), proto, port
        LIMIT {limit:UInt64} OFFSET {offset:UInt64}
    ),
    -- Phase 2: everything else, for the page's ports only. A CTE is evaluated again
    -- wherever it is named, a scalar subquery once per query: the page's keys are read
    -- once, into one array, and each set below is built from that array.
    page_keys AS (
        SELECT groupArray((target, ip, proto, port)) AS keys FROM page
    ),
    -- Accepted risks (`portwatch accept`) still in force; a port's acceptance also ends
    -- when its service/product/version differ from what was accepted (ACCEPTED_FOR
    -- below; a scan that renames the port ends it in the store, acceptances.py).
    accepted AS (
        SELECT target, proto, port, note, accepted_by, until, service, product, version
        FROM accepted_risks FINAL
        WHERE is_removed = 0 AND (until = toDateTime64(0, 3, 'UTC') OR until > now64(3))
    ),
    -- The page's hosts' organization, hostname and asset (latest_scan's, read for them
    -- only)
    host_names AS (
        SELECT target, ip, organization, hostname, asset FROM latest_host_scans
        WHERE (target, ip) IN (SELECT (k.1, k.2)
                               FROM (SELECT arrayJoin((SELECT keys FROM page_keys)) AS k))
    ),
    -- --history: when each port no longer seen was found closed (port_state, kept by the
    -- change writer); read only when history is asked (the filter folds to false).
    closed AS (
        SELECT target, ip, proto, port, changed_at AS closed_at
        FROM port_state FINAL
        WHERE {history:UInt8} = 1 AND is_open = 0
          AND (target, ip, proto, port) IN (SELECT arrayJoin((SELECT keys FROM page_keys)))
    )
SELECT
    f.target AS target,
    f.ip AS ip,
    if(host_names.target = '', f.hostname, host_names.hostname) AS hostname,
    if(host_names.target = '', f.asset, host_names.asset) AS asset,
    if(host_names.target = '', f.organization, host_names.organization) AS organization,
    f.port AS port,
    f.proto AS proto,
    -- the port's state now: as last seen if current ('open', UDP 'open|filtered');
    -- under --history, a port no longer seen is 'closed' (a closed event says when, in
    -- status) or 'not seen' (left out of the latest scan, not found closed)
    if(is_current, f.state,
       if(closed.closed_at IS NULL OR closed.closed_at = toDateTime64(0, 3, 'UTC'),
          'not seen', 'closed')) AS state,
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
       -- floored: a certificate expired an hour ago has -1 day left, not 0
       toInt64(floor((toUnixTimestamp64Milli(parseDateTime64BestEffortOrNull(
              f.cert_not_after, 3, 'UTC')) - toUnixTimestamp64Milli(now64(3))) / 86400000))
       ) AS cert_days_left,
    f.banner AS banner,
    f.method AS method,
    f.first_seen AS first_seen,
    f.last_seen AS last_seen,
    -- without --history every page row is current (phase 1 kept only those)
    ({history:UInt8} = 0 OR IS_CURRENT(f.last_scan_id, history_scan)) AS is_current,
    -- a port's acceptance by its target's name first, then by its address (each holds
    -- or not on its own: one ANY join over both spellings took either, a stale one too)
    -- (the name's verdict written out each time, not aliased: an alias is a column of
    -- the List's output)
    (ACCEPTED_FOR(acc_name, f) OR ACCEPTED_FOR(acc_ip, f)) AS is_port_accepted,
    (is_port_accepted OR acc_host.target != '') AS is_accepted,
    multiIf(ACCEPTED_FOR(acc_name, f), acc_name.note, is_port_accepted, acc_ip.note,
            acc_host.note) AS accepted_note,
    multiIf(ACCEPTED_FOR(acc_name, f), acc_name.accepted_by, is_port_accepted,
            acc_ip.accepted_by, acc_host.accepted_by) AS accepted_by,
    -- NULL: no acceptance, or one with no expiry (stored as 1970: not "expired in 1970")
    nullIf(multiIf(ACCEPTED_FOR(acc_name, f), acc_name.until, is_port_accepted, acc_ip.until,
                   acc_host.until), toDateTime64(0, 3, 'UTC')) AS accepted_until,
    if(is_current, 'open',
       if(closed.closed_at IS NULL OR closed.closed_at = toDateTime64(0, 3, 'UTC'),
          'not seen in the latest scan',
          concat('closed ', formatDateTime(closed.closed_at, '%Y-%m-%d %H:%i:%S')))) AS status
FROM current_findings AS f
LEFT JOIN (SELECT * FROM latest_scan WHERE {history:UInt8} = 1) AS history_scan
    ON history_scan.target = f.target AND history_scan.ip = f.ip
-- (nmap_prior before prevalence: ClickHouse's analyzer resolves the other order wrongly)
LEFT JOIN nmap_prior ON nmap_prior.proto = f.proto AND nmap_prior.port = f.port
LEFT JOIN prevalence ON prevalence.proto = f.proto AND prevalence.port = f.port
LEFT ANY JOIN accepted AS acc_name
    ON acc_name.target = lowerUTF8(f.target) AND acc_name.proto = f.proto
   AND acc_name.port = f.port
LEFT ANY JOIN accepted AS acc_ip
    ON acc_ip.target = f.ip AND acc_ip.proto = f.proto AND acc_ip.port = f.port
LEFT ANY JOIN (SELECT * FROM accepted WHERE port = 0) AS acc_host
    ON (acc_host.target = f.ip OR acc_host.target = lowerUTF8(f.target))
LEFT JOIN host_names ON host_names.target = f.target AND host_names.ip = f.ip
LEFT JOIN closed ON closed.target = f.target AND closed.ip = f.ip AND closed.proto = f.proto
                AND closed.port = f.port
-- the page's keys again as a set on findings' sorting key: the read skips other granules
WHERE (f.target, f.ip, f.proto, f.port) IN (SELECT arrayJoin((SELECT keys FROM page_keys)))
-- The page's own order: phase 1's sort, from the same values. A multiIf is fine on the
-- page's few rows; phase 1 needs its folding if()s, and `page` is not read a second time
-- (a CTE is re-evaluated at each use).
ORDER BY multiIf({sort:String} = 'port', toInt64(port),
                 {sort:String} = 'risk', toInt64(indexOf(['green', 'yellow', 'red'], risk_color)),
                 {sort:String} = 'prevalence', toInt64(prevalence_instances),
                 {sort:String} = 'first_seen', toUnixTimestamp64Milli(first_seen),
                 {sort:String} = 'last_seen', toUnixTimestamp64Milli(last_seen),
                 toInt64(0)) * if({direction:String} = 'desc', -1, 1),
         if({direction:String} = 'desc', '', multiIf(
             {sort:String} = 'service', lowerUTF8(service),
             {sort:String} = 'product', lowerUTF8(concat(product, ' ', version)),
             {sort:String} = 'organization', lowerUTF8(organization),
             {sort:String} = 'target', ADDRESS_TEXT(target), '') AS row_sort_text) ASC,
         if({direction:String} = 'desc', row_sort_text, '') DESC,
         ADDRESS_ORDER(target), ADDRESS_ORDER(ip), proto, port
SETTINGS optimize_move_to_prewhere_if_final = 1
