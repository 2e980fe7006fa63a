-- Risk score over time, per target address and day: the score of the address's last
-- scan of each day (scan_scores: the Summary's formula over what the scan saw and
-- carried, see history/risk_scores.sql; score = 100 x (1 - exp(-raw/40))).
-- Filters as in Summary: {target} (target, hostname, asset, address, prefix or CIDR)
-- picks the hosts the Summary lists for it (their names now), with their whole history;
-- {org} the addresses of that organization on each day (as risk_days.sql counts them);
-- {days} bounds the window (0 = everything stored) in whole UTC days. It reads one row per
-- scan of the window's days of those hosts, never the raw observations; the unfiltered and
-- organization charts read risk_days.sql, one row per day and organization.
WITH named AS (SELECT h.target, h.ip FROM latest_host_scans AS h WHERE TARGET_MATCHES(h))
SELECT
    day,
    target,
    ip,
    round(100 * (1 - exp(-argMax(raw_score, finished_at) / 40)), 1) AS risk_score
-- FINAL: a scan computed again replaces its row (a later shard can move it to the next
-- day); keyed by host: a target's chart reads its hosts' rows only
FROM host_scan_scores AS scans FINAL
WHERE ({days:UInt16} = 0 OR day >= toDate(now('UTC') - toIntervalDay({days:UInt16}), 'UTC'))
  -- the hosts the Summary lists for the filter (their names now), their whole history
  AND ({target:String} = '' OR (scans.target, scans.ip) IN named)
  AND ({org:String} = '' OR lowerUTF8(scans.organization) = lowerUTF8({org:String}))
GROUP BY day, target, ip
ORDER BY day, ADDRESS_ORDER(target), ADDRESS_ORDER(ip)
