-- Per-target page: the target's risk score after every scan of it (two scans today are two
-- points), with the Summary's formula (summary.sql: raw = 10 x red + 3 x yellow + 1 x green
-- over the scan's open ports, CDN-expected and UDP open|filtered count zero; score =
-- 100 x (1 - exp(-raw / 40))). A scan's open ports are those it saw and those it carried
-- (ddl.sql carried_history: open in the change log, not covered by a narrower scan), the
-- latter as they were last seen by the end of that scan: after a `--ports 22,80` scan
-- the point is the Summary's score then, not that of two ports. {target} is the target as
-- written (the sorting key's first column, so only this target's rows are read); {ip}
-- narrows to one address ('' = all). A scan `portwatch prune` removed keeps its point from
-- the risk chart's rows (ddl.sql host_scan_scores, kept by prune): its score, status
-- "pruned", its port counts no longer known (NULL).
WITH
    scans AS (
        SELECT target, ip, scan_id, max(finished_at) AS finished_at,
               if(min(done), 'completed', 'interrupted') AS status, max(done) = 0 AS is_cut
        FROM (SELECT target, ip, scan_id, finished_at, status = 'completed' AS done
              FROM host_scans FINAL
              WHERE target = {target:String} AND ({ip:String} = '' OR ip = {ip:String}))
        GROUP BY target, ip, scan_id
    ),
    -- the scans that completed no shard, and the ports they left as they were (one
    -- target's rows: evaluated again where named, at no cost worth a scalar)
    cut AS (SELECT target, ip, scan_id, finished_at FROM scans WHERE is_cut),
    cut_ports AS (SELECT * FROM (CUT_SCAN_CARRIED(cut))),
    counts AS (
        SELECT target, ip, scan_id,
               countIf(is_scored AND risk_color = 'red') AS red,
               countIf(is_scored AND risk_color = 'yellow') AS yellow,
               countIf(is_scored AND risk_color = 'green') AS green,
               count() AS open_ports
        FROM (
            SELECT target, ip, scan_id, toString(risk_color) AS risk_color,
                   (is_cdn_expected = 0 AND state = 'open') AS is_scored
            FROM port_observations FINAL
            WHERE target = {target:String} AND ({ip:String} = '' OR ip = {ip:String})
        )
        GROUP BY target, ip, scan_id
    ),
    -- the ports each scan carried (ddl.sql carried_history), and those a scan that
    -- completed no shard left as they were (CUT_SCAN_CARRIED), as last seen
    carried_rows AS (
        SELECT DISTINCT target, ip, scan_id, proto, port FROM (
            SELECT target, ip, scan_id, proto, port FROM carried_history
            WHERE target = {target:String} AND ({ip:String} = '' OR ip = {ip:String})
            UNION ALL
            SELECT target, ip, scan_id, proto, port FROM cut_ports)
    ),
    seen AS (
        SELECT target, ip, scan_id, proto, port FROM port_observations
        WHERE target = {target:String} AND ({ip:String} = '' OR ip = {ip:String})
    ),
    -- each carried port as it was last seen up to the end of the scan that carried it
    -- (its latest observation then), not as it is now: a later change of the port
    -- rewrote the points of every earlier scan that carried it (a review). When prune
    -- removed those observations, as it is now (port_latest, which prune keeps). The
    -- Summary's now is the latest scan's point, which reads the same rows.
    carried_then AS (
        SELECT c.target AS target, c.ip AS ip, c.scan_id AS scan_id,
               argMax((o.risk_color, o.is_scored), (o.is_then, o.observed_at)) AS latest
        FROM (SELECT * FROM carried_rows WHERE (target, ip, scan_id, proto, port) NOT IN (
                  SELECT target, ip, scan_id, proto, port FROM seen)) AS c
        INNER JOIN scans AS s
            ON s.target = c.target AND s.ip = c.ip AND s.scan_id = c.scan_id
        INNER JOIN (
            SELECT target, ip, proto, port, observed_at, 1 AS is_then,
                   toString(risk_color) AS risk_color,
                   (is_cdn_expected = 0 AND state = 'open') AS is_scored
            FROM port_observations FINAL
            WHERE target = {target:String} AND ({ip:String} = '' OR ip = {ip:String})
            UNION ALL
            SELECT target, ip, proto, port, toDateTime64(0, 3, 'UTC') AS observed_at,
                   0 AS is_then, toString(risk_color) AS risk_color,
                   (is_cdn_expected = 0 AND state = 'open') AS is_scored
            FROM port_latest FINAL
            WHERE target = {target:String} AND ({ip:String} = '' OR ip = {ip:String})
        ) AS o ON o.target = c.target AND o.ip = c.ip AND o.proto = c.proto AND o.port = c.port
        WHERE o.observed_at <= s.finished_at
        GROUP BY c.target, c.ip, c.scan_id, c.proto, c.port
    ),
    carried AS (
        SELECT target, ip, scan_id,
               countIf(latest.2 AND latest.1 = 'red') AS red,
               countIf(latest.2 AND latest.1 = 'yellow') AS yellow,
               countIf(latest.2 AND latest.1 = 'green') AS green, count() AS open_ports
        FROM carried_then GROUP BY target, ip, scan_id
    ),
    kept AS (
        SELECT
            scans.target AS target, scans.ip AS ip, scans.scan_id AS scan_id,
            scans.finished_at AS finished_at, scans.status AS status,
            toNullable(toUInt64(counts.open_ports + carried.open_ports)) AS open_ports,
            toNullable(toUInt64(counts.red + carried.red)) AS red,
            toNullable(toUInt64(counts.yellow + carried.yellow)) AS yellow,
            toNullable(toUInt64(counts.green + carried.green)) AS green,
            toUInt64(10 * (counts.red + carried.red) + 3 * (counts.yellow + carried.yellow)
                     + counts.green + carried.green) AS raw_score
        FROM scans
        LEFT JOIN counts ON counts.target = scans.target AND counts.ip = scans.ip
                        AND counts.scan_id = scans.scan_id
        LEFT JOIN carried ON carried.target = scans.target AND carried.ip = scans.ip
                         AND carried.scan_id = scans.scan_id
    ),
    pruned AS (
        SELECT target, ip, scan_id, latest.1 AS finished_at, 'pruned' AS status,
               CAST(NULL AS Nullable(UInt64)) AS open_ports,
               CAST(NULL AS Nullable(UInt64)) AS red,
               CAST(NULL AS Nullable(UInt64)) AS yellow,
               CAST(NULL AS Nullable(UInt64)) AS green,
               toUInt64(latest.2) AS raw_score
        FROM (
            SELECT target, ip, scan_id, max((h.finished_at, h.raw_score)) AS latest
            FROM host_scan_scores AS h FINAL
            WHERE h.target = {target:String} AND ({ip:String} = '' OR h.ip = {ip:String})
              AND h.is_deleted = 0
              AND (h.target, h.ip, h.scan_id) NOT IN (SELECT target, ip, scan_id FROM scans)
            GROUP BY target, ip, scan_id)
    )
SELECT target, ip, scan_id, finished_at, status, open_ports, red, yellow, green, raw_score,
       round(100 * (1 - exp(-raw_score / 40)), 1) AS risk_score
FROM (SELECT * FROM kept UNION ALL SELECT * FROM pruned)
ORDER BY finished_at, ADDRESS_ORDER(ip)
