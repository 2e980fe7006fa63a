-- Products report: product and version with the number of instances (open
-- ports running it) and of distinct targets, over the current findings.
-- Drill-down: `portwatch report list --product P [--version V]`.
WITH
    latest_scan AS (
        SELECT target, ip, argMax(scan_id, finished_at) AS scan_id
        FROM host_scans GROUP BY target, ip
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
  AND ({target:String} = ''
       OR lower(f.target) = lower({target:String})
       OR lower(f.hostname) = lower({target:String})
       OR lower(f.asset) = lower({target:String})
       OR f.ip = lower({target:String})
       OR (empty(replaceRegexpAll({target:String}, '[0-9.]', ''))
           AND NOT isIPv4String({target:String})
           AND startsWith(f.ip, concat({target:String},
                                          if(endsWith({target:String}, '.'), '', '.'))))
       OR (endsWith({target:String}, ':')
           AND empty(replaceRegexpAll(lower({target:String}), '[0-9a-f:]', ''))
           AND startsWith(f.ip, lower({target:String})))
       OR (length(splitByChar('/', {target:String})) = 2
           AND ((isIPv4String(splitByChar('/', {target:String})[1])
                 AND toUInt8OrNull(splitByChar('/', {target:String})[2]) <= 32)
                OR (isIPv6String(splitByChar('/', {target:String})[1])
                    AND toUInt8OrNull(splitByChar('/', {target:String})[2]) <= 128))
           AND (isIPv4String(f.ip) OR isIPv6String(f.ip))
           AND isIPAddressInRange(
               if(isIPv4String(f.ip) OR isIPv6String(f.ip), f.ip, '::'),
               if((isIPv4String(splitByChar('/', {target:String})[1])
                   AND toUInt8OrNull(splitByChar('/', {target:String})[2]) <= 32)
                  OR (isIPv6String(splitByChar('/', {target:String})[1])
                      AND toUInt8OrNull(splitByChar('/', {target:String})[2]) <= 128),
                  {target:String}, '::/128'))))
  AND ({org:String} = '' OR lower(f.organization) = lower({org:String}))
  AND ({product:String} = '' OR lower(f.product) = lower({product:String}))
  AND ({port:UInt16} = 0 OR f.port = {port:UInt16})
  AND ({color:String} = '' OR f.risk_color = {color:String})
GROUP BY product, version
ORDER BY instances DESC, product, version
LIMIT {limit:UInt64} OFFSET {offset:UInt64}
