-- Products report: product and version with the number of instances (open
-- ports running it) and of distinct targets, over the current findings.
-- Drill-down: `portwatch report list --product P [--product-version V]`.
WITH
    -- one row per host, kept by a materialized view (ddl.sql host_latest), as in the
    -- List: not a GROUP BY over every scan ever stored, and still there after a prune
    latest_scan AS (
        SELECT target, ip, scan_id FROM latest_host_scans
    )
SELECT
    f.product AS product,
    f.version AS version,
    arrayStringConcat(arraySort(groupUniqArray(f.service)), ',') AS services,
    count() AS instances,
    uniqExact(f.target) AS targets,
    arrayStringConcat(arraySort(groupUniqArray(f.risk_color)), ',') AS colors
FROM current_findings AS f
LEFT JOIN latest_scan ON latest_scan.target = f.target AND latest_scan.ip = f.ip
WHERE f.product != ''
  AND (latest_scan.scan_id = '' OR f.last_scan_id = latest_scan.scan_id)
  AND TARGET_MATCHES(f)
  AND ({org:String} = '' OR lowerUTF8(trimBoth(f.organization)) = lowerUTF8(trimBoth({org:String})))
  AND ({product:String} = '' OR lowerUTF8(trimBoth(f.product)) = lowerUTF8(trimBoth({product:String})))
  AND ({port:UInt16} = 0 OR f.port = {port:UInt16})
  AND ({color:String} = '' OR f.risk_color = {color:String})
GROUP BY product, version
ORDER BY instances DESC, product, version
LIMIT {limit:UInt64} OFFSET {offset:UInt64}
