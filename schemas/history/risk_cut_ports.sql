-- The ports the scans risk_dirty noted up to {t} that completed no shard (interrupted,
-- killed while running) left as they were (CUT_SCAN_CARRIED), into the refresh's
-- temporary table risk_cut_ports, which risk_scores.sql reads as carried ports. Run by
-- stream_processors/risk_days.py only when such a scan is noted. One statement, its CTEs
-- evaluated where named: 100,000 cut scans in ~2 s, where a scalar array of them took
-- 45-77 s (BENCHMARKS.md, twenty-sixth session).
INSERT INTO risk_cut_ports (target, ip, scan_id, proto, port)
WITH
    dirty AS (
        SELECT DISTINCT target, ip, scan_id FROM risk_dirty
        WHERE noted_at <= {t:DateTime64(3, 'UTC')}
    ),
    cut AS (
        SELECT target, ip, scan_id, max(finished_at) AS finished_at
        FROM host_scans FINAL
        WHERE (target, ip, scan_id) IN (SELECT target, ip, scan_id FROM dirty)
        GROUP BY target, ip, scan_id
        HAVING countIf(status = 'completed') = 0
    )
SELECT target, ip, scan_id, proto, port FROM (CUT_SCAN_CARRIED(cut))
