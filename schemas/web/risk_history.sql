-- Risk score over time, per target address and day: the score of the address's last
-- scan of each day, with the same formula as the Summary report (summary.sql:
-- raw = 10 x red + 3 x yellow + 1 x green over the scan's open ports, CDN-expected
-- ports and unconfirmed UDP open|filtered count zero; score = 100 x (1 - exp(-raw/40))).
-- A scan with no open port scores 0 (it comes from host_scans, not observations).
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
    per_scan AS (
        SELECT scans.target AS target, scans.ip AS ip, scans.scan_finished_at AS finished_at,
               toDate(scans.scan_finished_at) AS day,
               10 * counts.red + 3 * counts.yellow + counts.green AS raw_score
        FROM scans
        LEFT JOIN counts ON counts.target = scans.target AND counts.ip = scans.ip
                        AND counts.scan_id = scans.scan_id
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
