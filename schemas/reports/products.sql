-- Products report: product and version with the number of instances (open
-- ports running it) and of distinct targets, over the current findings.
-- Drill-down: `portwatch report list --product P [--version V]`.
WITH
    cur AS (
        SELECT target, ip, proto, port,
               argMaxMerge(last_scan_id) AS last_scan_id, argMaxMerge(latest) AS l
        FROM findings GROUP BY target, ip, proto, port
    ),
    latest_scan AS (
        SELECT target, ip, argMax(scan_id, finished_at) AS scan_id
        FROM host_scans GROUP BY target, ip
    )
SELECT
    cur.l.product AS product,
    cur.l.version AS version,
    arrayStringConcat(arraySort(groupUniqArray(cur.l.service)), ',') AS services,
    count() AS instances,
    uniqExact(cur.target) AS targets,
    arrayStringConcat(arraySort(groupUniqArray(cur.l.risk_color)), ',') AS colors
FROM cur
LEFT JOIN latest_scan ON latest_scan.target = cur.target AND latest_scan.ip = cur.ip
WHERE cur.l.product != ''
  AND (latest_scan.scan_id = '' OR cur.last_scan_id = latest_scan.scan_id)
  AND ({target:String} = '' OR cur.target = {target:String} OR cur.ip = {target:String}
       OR cur.l.hostname = {target:String})
  AND ({org:String} = '' OR cur.l.organization = {org:String})
  AND ({product:String} = '' OR lower(cur.l.product) = lower({product:String}))
  AND ({port:UInt16} = 0 OR cur.port = {port:UInt16})
  AND ({color:String} = '' OR cur.l.risk_color = {color:String})
GROUP BY product, version
ORDER BY instances DESC, product, version
LIMIT {limit:UInt64} OFFSET {offset:UInt64}
