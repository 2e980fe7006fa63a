-- The risk chart of the whole estate or of one organization ({org}, '' = all): per day,
-- the average and the worst of the addresses' scores (web/risk_history.sql's rows) and
-- how many addresses, from risk_days (one row per day and organization, kept by
-- stream_processors/risk_days.py): what it reads grows with the days shown, not with the
-- estate or its history. {days} bounds the window (0 = everything stored) in whole UTC
-- days.
SELECT
    day,
    round(sum(score_sum) / sum(addresses), 1) AS average,
    max(score_max) AS worst,
    sum(addresses) AS targets
FROM risk_days FINAL
WHERE addresses > 0
  AND ({days:UInt16} = 0 OR day >= toDate(now('UTC') - toIntervalDay({days:UInt16}), 'UTC'))
  AND ({org:String} = '' OR lowerUTF8(organization) = lowerUTF8({org:String}))
GROUP BY day
ORDER BY day
