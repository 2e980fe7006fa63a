-- Summary report: one row per target address: asset name, organization, open
-- ports with their colours, risk score with its parts and grade, last scanned.
--
-- Risk score (DESIGN.md "Risk"; stream_processors/risk.py holds the same formula
-- and a test proves both agree):
--   raw   = 10 x red + 3 x yellow + 1 x green   (open ports of the latest completed scan;
--           CDN-expected ports and unconfirmed UDP open|filtered count zero)
--   score = round(100 x (1 - exp(-raw / 40)), 1)        -- bounded in [0, 100] (rounded)
--   grade = A < 10 <= B < 25 <= C < 50 <= D < 75 <= F
-- Adding an open port never lowers raw, so the score is monotonic.
--
-- Two phases (issue: pages at 100,000 hosts). `page` ranks every host by its score from
-- port_latest (ddl.sql: plain columns, one cheap FINAL) and takes the page's hosts
-- (ORDER BY ... LIMIT/OFFSET); only those hosts' ports are then read again with their
-- accepted risks, port lists and scan totals (the joins with OR conditions and the
-- groupArray over every port of the estate cost ~1.5 s before the LIMIT). Host sets are on
-- the sorting keys' prefix (target, ip), read with optimize_move_to_prewhere_if_final (it
-- only moves sorting-key conditions under FINAL). Without a limit, `page` is every host;
-- one report row per `page` row (the web counts and sums `page`: schemas.report_page_sql).
WITH
    -- one row per host, kept by a materialized view (ddl.sql host_latest): the cost
    -- follows the estate, not the number of scans ever stored
    -- last_scan_id: its latest scan (status, time, what it covered); its ports now are
    -- those of ports_scan_id, its latest completed scan, and those a later scan has seen
    -- since that one ended (ddl.sql latest_host_scans: an interrupted or running rescan
    -- closes nothing, and what it sees is open), and those the change state holds open
    -- that a narrower ports scan did not cover (ddl.sql ports_carried)
    scans AS (
        SELECT target, ip, scan_id AS last_scan_id, finished_at AS last_scanned,
               hostname, organization, asset, ports_scan_id, ports_seen_after
        FROM latest_host_scans
    ),
    -- Phase 1: per host and scan, the counts its score is made of and whether it has the
    -- port, colour or product a filter asks for (a filter not given folds to 1), counted
    -- per (host, scan) first (the next step then sees a row or two per host instead of
    -- every port). A host's ports now are decided port by port, as IS_CURRENT does for
    -- the List and phase 2: seen by its ports scan, or seen since that scan ended (two
    -- scans of a host that overlap split a scan's ports: one seen before, one after),
    -- or carried; the groups of ports now are summed per host.
    by_scan AS (
        SELECT p.target AS target, p.ip AS ip, p.scan_id AS scan_id,
               count() AS open_ports,
               countIf(p.is_cdn_expected = 0 AND p.state = 'open'
                       AND p.risk_color = 'red') AS red,
               countIf(p.is_cdn_expected = 0 AND p.state = 'open'
                       AND p.risk_color = 'yellow') AS yellow,
               countIf(p.is_cdn_expected = 0 AND p.state = 'open'
                       AND p.risk_color = 'green') AS green,
               countIf(p.is_cdn_expected = 1) AS cdn_expected,
               max({port:UInt16} = 0 OR p.port = {port:UInt16}) AS has_port,
               max({color:String} = '' OR p.risk_color = {color:String}) AS has_color,
               max({product:String} = '' OR lowerUTF8(p.product) = lowerUTF8({product:String}))
                   AS has_product,
               -- open though the ports scan did not see it (ddl.sql ports_carried)
               IS_CARRIED(p) AS is_carried,
               (p.scan_id = s.ports_scan_id OR p.last_seen > s.ports_seen_after) AS is_now
        FROM port_latest AS p FINAL
        INNER JOIN scans AS s ON s.target = p.target AND s.ip = p.ip
        GROUP BY p.target, p.ip, p.scan_id, is_carried, is_now
    ),
    counts AS (
        SELECT b.target AS target, b.ip AS ip,
               sum(b.open_ports) AS open_ports, sum(b.red) AS red, sum(b.yellow) AS yellow,
               sum(b.green) AS green, sum(b.cdn_expected) AS cdn_expected,
               max(b.has_port) AS has_port, max(b.has_color) AS has_color,
               max(b.has_product) AS has_product
        FROM by_scan AS b
        WHERE b.is_now OR b.is_carried
        GROUP BY b.target, b.ip
    ),
    page AS (
        SELECT scans.target AS target, scans.ip AS ip,
               round(100 * (1 - exp(-(10 * counts.red + 3 * counts.yellow + counts.green) / 40)),
                     1) AS risk_score,
               -- (the web's colour totals sum these over `page` with no limit)
               counts.open_ports AS open_ports, counts.red AS red, counts.yellow AS yellow,
               counts.green AS green, counts.cdn_expected AS cdn_expected
        FROM scans
        LEFT JOIN counts ON counts.target = scans.target AND counts.ip = scans.ip
        WHERE TARGET_MATCHES(scans)
          AND ({org:String} = '' OR lowerUTF8(scans.organization) = lowerUTF8({org:String}))
          -- a host without ports has none of them (the join's defaults are 0)
          AND ({port:UInt16} = 0 OR counts.has_port = 1)
          AND ({color:String} = '' OR counts.has_color = 1)
          AND ({product:String} = '' OR counts.has_product = 1)
        ORDER BY risk_score DESC, ADDRESS_ORDER(target), ADDRESS_ORDER(ip)
        LIMIT {limit:UInt64} OFFSET {offset:UInt64}
    ),
    -- Phase 2: the page's hosts only. A CTE is evaluated again wherever it is named, a
    -- scalar subquery once per query: the page's hosts are read once, into one array,
    -- and each set below is built from that array.
    page_hosts AS (
        SELECT groupArray((target, ip)) AS hosts FROM page
    ),
    -- The shard rows of the page's hosts' latest scans, deduplicated per shard as FINAL
    -- would (argMax on the version column) but without merging every part of the table
    -- (a GROUP BY over every host scan took 1.9 s at 600,000 host scans)
    scan_totals AS (
        SELECT target, ip, scan_id,
               sum(ports_scanned) AS ports_scanned,
               max(is_tarpit) AS is_tarpit,
               -- what the scan of this host left out and why (tarpit ports dropped...)
               arrayStringConcat(arraySort(arrayFilter(n -> n != '', groupUniqArray(note))),
                                 '; ') AS note,
               if(min(status = 'completed'), 'completed', 'interrupted') AS status
        FROM (
            SELECT target, ip, scan_id, shard_id,
                   argMax(ports_scanned, finished_at) AS ports_scanned,
                   argMax(is_tarpit, finished_at) AS is_tarpit,
                   argMax(note, finished_at) AS note,
                   argMax(status, finished_at) AS status
            FROM host_scans
            -- the page's hosts' latest scans only (on the sorting key's prefix)
            WHERE (target, ip, scan_id) IN (
                SELECT target, ip, last_scan_id FROM scans
                WHERE (target, ip) IN (SELECT arrayJoin((SELECT hosts FROM page_hosts))))
            GROUP BY target, ip, scan_id, shard_id
        )
        GROUP BY target, ip, scan_id
    ),
    -- Accepted risks in force (as in list.sql): shown, still scored (the risk is real).
    accepted AS (
        SELECT target, proto, port, note, accepted_by, until, service, product, version
        FROM accepted_risks FINAL
        WHERE is_removed = 0 AND (until = toDateTime64(0, 3, 'UTC') OR until > now64(3))
    ),
    ports AS (
        SELECT f.target AS target, f.ip AS ip, f.port AS port, f.proto AS proto,
               f.risk_color AS color, f.is_cdn_expected AS is_cdn_expected,
               f.state AS state, f.product AS product,
               (f.is_cdn_expected = 0 AND f.state = 'open') AS is_scored,
               ACCEPTED_FOR(acc_name, f) AS is_name_accepted,
               (is_name_accepted OR ACCEPTED_FOR(acc_ip, f)) AS is_port_accepted,
               (is_port_accepted OR acc_host.target != '') AS is_accepted,
               multiIf(is_name_accepted,
                       format('{}/{}: {} (by {})', toString(f.port), f.proto, acc_name.note,
                              acc_name.accepted_by),
                       is_port_accepted,
                       format('{}/{}: {} (by {})', toString(f.port), f.proto, acc_ip.note,
                              acc_ip.accepted_by),
                       format('all ports: {} (by {})', acc_host.note,
                              acc_host.accepted_by)) AS accepted_text
        -- (the host set inside the read, not after the joins: only the page's ports are
        -- read and joined)
        FROM (SELECT * FROM port_latest FINAL
              WHERE (target, ip) IN (SELECT arrayJoin((SELECT hosts FROM page_hosts)))) AS f
        INNER JOIN (SELECT * FROM scans WHERE (target, ip) IN (SELECT arrayJoin((SELECT hosts FROM page_hosts))))
            AS page_scans ON page_scans.target = f.target AND page_scans.ip = f.ip
        LEFT ANY JOIN accepted AS acc_name
            ON acc_name.target = lowerUTF8(f.target) AND acc_name.proto = f.proto
           AND acc_name.port = f.port
        LEFT ANY JOIN accepted AS acc_ip
            ON acc_ip.target = f.ip AND acc_ip.proto = f.proto AND acc_ip.port = f.port
        LEFT ANY JOIN (SELECT * FROM accepted WHERE port = 0) AS acc_host
            ON (acc_host.target = f.ip OR acc_host.target = lowerUTF8(f.target))
        -- (port by port: the same ports as phase 1's groups, but for scans that overlap)
        WHERE IS_CURRENT(f.scan_id, page_scans)
    ),
    per_host AS (
        SELECT target, ip,
               count() AS open_ports,
               countIf(is_scored AND color = 'red') AS red,
               countIf(is_scored AND color = 'yellow') AS yellow,
               countIf(is_scored AND color = 'green') AS green,
               countIf(is_cdn_expected = 1) AS cdn_expected,
               -- the state too: an unconfirmed UDP port (open|filtered) is listed but
               -- scores nothing, and says so (a review: 13 yellow listed, 12 counted)
               arraySort(groupArray((port, proto, color, is_cdn_expected, state))) AS port_list,
               countIf(is_accepted) AS accepted,
               arraySort(groupUniqArrayIf(accepted_text, is_accepted)) AS accepted_notes
        FROM ports GROUP BY target, ip
    )
SELECT
    scans.target AS target,
    scans.ip AS ip,
    scans.hostname AS hostname,
    scans.asset AS asset,
    scans.organization AS organization,
    per_host.open_ports AS open_ports,
    per_host.port_list AS ports,
    per_host.red AS red,
    per_host.yellow AS yellow,
    per_host.green AS green,
    per_host.cdn_expected AS cdn_expected,
    10 * red + 3 * yellow + green AS raw_score,
    round(100 * (1 - exp(-raw_score / 40)), 1) AS risk_score,
    multiIf(risk_score < 10, 'A', risk_score < 25, 'B', risk_score < 50, 'C',
            risk_score < 75, 'D', 'F') AS grade,
    -- printf, not toString: toString(24.0) gives '24', Python's Score.parts says '24.0'
    format('10x{} red + 3x{} yellow + 1x{} green = {} -> {}', toString(red), toString(yellow),
           toString(green), toString(raw_score),
           printf('%.1f', risk_score)) AS score_parts,
    scan_totals.is_tarpit AS is_tarpit,
    scan_totals.status AS scan_status,
    scan_totals.note AS scan_note,
    scan_totals.ports_scanned AS ports_scanned,
    scans.last_scanned AS last_scanned,
    per_host.accepted AS accepted,
    per_host.accepted_notes AS accepted_notes
-- (the page's hosts inside the read, before the joins)
FROM (SELECT * FROM scans
      WHERE (target, ip) IN (SELECT arrayJoin((SELECT hosts FROM page_hosts)))) AS scans
LEFT JOIN per_host ON per_host.target = scans.target AND per_host.ip = scans.ip
LEFT JOIN scan_totals ON scan_totals.target = scans.target AND scan_totals.ip = scans.ip
                     AND scan_totals.scan_id = scans.last_scan_id
ORDER BY risk_score DESC, ADDRESS_ORDER(target), ADDRESS_ORDER(ip)
SETTINGS optimize_move_to_prewhere_if_final = 1
