-- Risk score over time, per target address and day: the score of the address's last
-- scan of each day (scan_scores: the Summary's formula over what the scan saw and
-- carried, see history/risk_scores.sql; score = 100 x (1 - exp(-raw/40))).
-- Filters as in Summary: {target} (target, hostname, asset, address, prefix or CIDR) and
-- {org}; {days} bounds the window (0 = everything stored) in whole UTC days. It reads one
-- row per scan, never the raw observations; the unfiltered and organization charts read
-- risk_days.sql, one row per day and organization.
SELECT
    day,
    target,
    ip,
    round(100 * (1 - exp(-argMax(raw_score, finished_at) / 40)), 1) AS risk_score
-- FINAL: a scan computed again replaces its row (a later shard can move it to the next day)
FROM scan_scores AS scans FINAL
WHERE ({days:UInt16} = 0 OR day >= toDate(now('UTC') - toIntervalDay({days:UInt16}), 'UTC'))
  AND TARGET_MATCHES(scans)
  -- read by the sorting key: only the hosts the filter names now (as the Summary does)
  AND ({target:String} = '' OR (scans.target, scans.ip) IN (
      SELECT h.target, h.ip FROM latest_host_scans AS h WHERE TARGET_MATCHES(h)))
  AND ({org:String} = '' OR lowerUTF8(scans.organization) = lowerUTF8({org:String}))
GROUP BY day, target, ip
ORDER BY day, target, ip
