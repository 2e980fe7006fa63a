-- Risk score over time, per target address and day: the score of the address's last
-- scan of each day (host_day_scores: the Summary's formula over what the scan saw and
-- carried, see history/risk_scores.sql; score = 100 x (1 - exp(-raw/40))).
-- Filters as in Summary: {target} (target, hostname, asset, address, prefix or CIDR) and
-- {org}; {days} bounds the window (0 = everything stored). It reads one row per address
-- and day, never the raw observations; the unfiltered and organization charts read
-- risk_days.sql, one row per day and organization.
SELECT
    day,
    target,
    ip,
    round(100 * (1 - exp(-raw_score / 40)), 1) AS risk_score
FROM host_day_scores AS scans FINAL
WHERE ({days:UInt16} = 0 OR day >= toDate(now() - toIntervalDay({days:UInt16})))
  AND TARGET_MATCHES(scans)
  AND ({org:String} = '' OR lowerUTF8(scans.organization) = lowerUTF8({org:String}))
ORDER BY day, target, ip
