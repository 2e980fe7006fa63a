-- Risk score over time, per target address and day: the score of the address's last
-- scan of each day, with the same formula as the Summary report (summary.sql:
-- raw = 10 x red + 3 x yellow + 1 x green over the scan's open ports, CDN-expected
-- ports and unconfirmed UDP open|filtered count zero; score = 100 x (1 - exp(-raw/40))).
-- A scan with no open port scores 0 (it comes from host_scans, not observations). A scan's
-- open ports are those it saw and those it carried (ddl.sql carried_history: open in the
-- change log, not covered by a narrower scan), the latter as they were last seen, as the
-- Summary shows them (history/target_scores.sql does the same).
-- Filters as in Summary: {target} (target, hostname, asset, address, prefix or CIDR) and {org};
-- {days} bounds the window (0 = everything stored), in the reads themselves: a week's
-- chart reads a week of scans and their observations, however long the history.
WITH
    scans AS (
        SELECT target, ip, scan_id,
               max(finished_at) AS scan_finished_at,
               min(started_at) AS scan_started_at,
               argMax(organization, finished_at) AS organization,
               argMax(hostname, finished_at) AS hostname,
               argMax(asset, finished_at) AS asset
        FROM host_scans FINAL
        -- every shard of the scans that end in the window (one of their shards does):
        -- a scan's first shards may have ended before it
        WHERE {days:UInt16} = 0 OR (target, ip, scan_id) IN (
            SELECT target, ip, scan_id FROM host_scans
            WHERE finished_at >= now() - toIntervalDay({days:UInt16}))
        GROUP BY target, ip, scan_id
    ),
    counts AS (
        SELECT target, ip, scan_id,
               countIf(is_scored AND risk_color = 'red') AS red,
               countIf(is_scored AND risk_color = 'yellow') AS yellow,
               countIf(is_scored AND risk_color = 'green') AS green
        FROM (
            SELECT target, ip, scan_id, toString(risk_color) AS risk_color,
                   (is_cdn_expected = 0 AND state = 'open') AS is_scored
            FROM port_observations FINAL
            -- a scan's ports are observed after it starts: the window's scans' rows
            -- (and the monthly partitions they lie in) only
            WHERE {days:UInt16} = 0 OR observed_at >= (SELECT min(scan_started_at) FROM scans)
        )
        GROUP BY target, ip, scan_id
    ),
    -- the ports each scan carried (ddl.sql carried_history), as last seen (port_latest)
    carried AS (
        SELECT c.target AS target, c.ip AS ip, c.scan_id AS scan_id,
               countIf(l.is_scored AND l.risk_color = 'red') AS red,
               countIf(l.is_scored AND l.risk_color = 'yellow') AS yellow,
               countIf(l.is_scored AND l.risk_color = 'green') AS green
        FROM (
            SELECT DISTINCT target, ip, scan_id, proto, port FROM carried_history
            WHERE {days:UInt16} = 0 OR finished_at >= (SELECT min(scan_started_at) FROM scans)
        ) AS c
        INNER JOIN (
            SELECT target, ip, proto, port, toString(risk_color) AS risk_color,
                   (is_cdn_expected = 0 AND state = 'open') AS is_scored
            FROM port_latest FINAL
            -- only the carried ports' rows (none read when nothing was carried)
            WHERE (target, ip, proto, port) IN (
                SELECT target, ip, proto, port FROM carried_history
                WHERE {days:UInt16} = 0
                   OR finished_at >= (SELECT min(scan_started_at) FROM scans))
        ) AS l ON l.target = c.target AND l.ip = c.ip AND l.proto = c.proto AND l.port = c.port
        GROUP BY c.target, c.ip, c.scan_id
    ),
    per_scan AS (
        SELECT scans.target AS target, scans.ip AS ip, scans.scan_finished_at AS finished_at,
               toDate(scans.scan_finished_at) AS day,
               10 * (counts.red + carried.red) + 3 * (counts.yellow + carried.yellow)
                   + counts.green + carried.green AS raw_score
        FROM scans
        LEFT JOIN counts ON counts.target = scans.target AND counts.ip = scans.ip
                        AND counts.scan_id = scans.scan_id
        LEFT JOIN carried ON carried.target = scans.target AND carried.ip = scans.ip
                         AND carried.scan_id = scans.scan_id
        WHERE TARGET_MATCHES(scans)
          AND ({org:String} = '' OR lowerUTF8(scans.organization) = lowerUTF8({org:String}))
    )
SELECT
    day,
    target,
    ip,
    round(100 * (1 - exp(-argMax(raw_score, finished_at) / 40)), 1) AS risk_score
FROM per_scan
GROUP BY day, target, ip
ORDER BY day, target, ip
