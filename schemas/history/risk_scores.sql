-- The rows of scan_scores for the host scans risk_dirty noted up to {t}: each scan's
-- raw score with the Summary's formula (summary.sql: raw = 10 x red + 3 x yellow +
-- 1 x green over its open ports, CDN-expected and UDP open|filtered count zero) over the
-- ports it saw and those it carried (ddl.sql carried_history: open in the change log, not
-- covered by a narrower scan) or left as they were by a scan that completed no shard
-- (risk_cut_ports), the latter as they were last seen (port_latest), as the Summary
-- shows them. A scan with no open port scores 0 (it comes from host_scans). Its day
-- is that of its last shard's end (UTC). Run by stream_processors/risk_days.py.
WITH
    dirty AS (
        SELECT DISTINCT target, ip, scan_id FROM risk_dirty
        WHERE noted_at <= {t:DateTime64(3, 'UTC')}
    ),
    scans AS (
        SELECT target, ip, scan_id,
               max(finished_at) AS scan_finished_at,
               min(started_at) AS scan_started_at,
               countIf(status = 'completed') = 0 AS is_cut,
               argMax(organization, finished_at) AS organization,
               argMax(hostname, finished_at) AS hostname,
               argMax(asset, finished_at) AS asset
        FROM host_scans FINAL
        WHERE (target, ip, scan_id) IN (SELECT target, ip, scan_id FROM dirty)
        GROUP BY target, ip, scan_id
    ),
    -- the noted scans' time bounds, read once (a CTE is evaluated again wherever it is
    -- named, a scalar subquery once per query)
    (SELECT (min(scan_started_at), max(scan_finished_at)) FROM scans) AS scanned,
    counts AS (
        SELECT target, ip, scan_id,
               countIf(is_scored AND risk_color = 'red') AS red,
               countIf(is_scored AND risk_color = 'yellow') AS yellow,
               countIf(is_scored AND risk_color = 'green') AS green
        FROM (
            SELECT target, ip, scan_id, toString(risk_color) AS risk_color,
                   (is_cdn_expected = 0 AND state = 'open') AS is_scored
            FROM port_observations FINAL
            WHERE (target, ip, scan_id) IN (SELECT target, ip, scan_id FROM dirty)
              -- a scan's ports are observed while it runs (a day's margin for clocks):
              -- the monthly partitions (and the parts) of other days are not read
              AND observed_at >= scanned.1 AND observed_at <= scanned.2 + toIntervalDay(1)
        )
        GROUP BY target, ip, scan_id
    ),
    -- the ports each scan carried (ddl.sql carried_history), and those a scan that
    -- completed no shard left as they were, as last seen: risk_cut_ports, a temporary
    -- table the refresh fills first (history/risk_cut_ports.sql), empty when none
    carried_rows AS (
        SELECT DISTINCT target, ip, scan_id, proto, port FROM (
            SELECT target, ip, scan_id, proto, port FROM carried_history
            WHERE (target, ip, scan_id) IN (SELECT target, ip, scan_id FROM dirty)
            UNION ALL
            SELECT target, ip, scan_id, proto, port FROM risk_cut_ports)
    ),
    -- the ports the noted scans saw, in the same bounds as counts
    seen AS (
        SELECT target, ip, scan_id, proto, port FROM port_observations
        WHERE (target, ip, scan_id) IN (SELECT target, ip, scan_id FROM dirty)
          AND observed_at >= scanned.1 AND observed_at <= scanned.2 + toIntervalDay(1)
    ),
    carried AS (CARRIED_COUNTS(carried_rows, seen))
SELECT
    scans.target AS target, scans.ip AS ip, scans.scan_id AS scan_id,
    toDate(scans.scan_finished_at, 'UTC') AS day, scans.scan_finished_at AS finished_at,
    scans.organization AS organization, scans.hostname AS hostname, scans.asset AS asset,
    10 * (counts.red + carried.red) + 3 * (counts.yellow + carried.yellow)
        + counts.green + carried.green AS raw_score
FROM scans
LEFT JOIN counts ON counts.target = scans.target AND counts.ip = scans.ip
                AND counts.scan_id = scans.scan_id
LEFT JOIN carried ON carried.target = scans.target AND carried.ip = scans.ip
                 AND carried.scan_id = scans.scan_id
