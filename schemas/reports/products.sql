-- Products report: product and version with the number of instances (open
-- ports running it) and of distinct target addresses (hosts: the addresses of a CIDR or
-- a name count one each, one address under two spellings once), over the current
-- findings.
-- Drill-down: `portwatch report list --product P [--product-version V]`.
WITH
    -- one row per host, kept by a materialized view (ddl.sql host_latest), as in the
    -- List: not a GROUP BY over every scan ever stored, and still there after a prune
    latest_scan AS (
        -- (its ports scan: the latest completed one, as in the List; its organization,
        -- hostname and asset: its latest scan's, as in the List and the Summary)
        SELECT target, ip, ports_scan_id, ports_seen_after, organization, hostname, asset
        FROM latest_host_scans
    )
-- Rows are what the List's filters tell apart: product and version in any case are one
-- row (shown as their first spelling), so each row's drill-down lists its ports only. A
-- version of "-" is no version, as the drill-down's "-" reads it ("Server: Acme/-" and
-- "Server: Acme" were two rows of one instance whose links each listed both: a review).
SELECT
    min(f.product) AS product,
    min(if(f.version = '-', '', f.version)) AS version,
    arrayStringConcat(arraySort(groupUniqArray(f.service)), ',') AS services,
    -- one open port once, however many targets name its address (a CIDR beside the
    -- address itself counted it twice: a review)
    uniqExact(f.ip, f.proto, f.port) AS instances,
    uniqExact(f.ip) AS targets,
    arrayStringConcat(arraySort(groupUniqArray(f.risk_color)), ',') AS colors
FROM current_findings AS f
LEFT JOIN latest_scan ON latest_scan.target = f.target AND latest_scan.ip = f.ip
WHERE f.product != ''
  AND IS_CURRENT(f.last_scan_id, latest_scan)
  AND HOST_TARGET_MATCHES(f)
  -- (a port whose host scan is not stored yet: its own)
  AND ({org:String} = ''
       OR lowerUTF8(if(latest_scan.target = '', f.organization, latest_scan.organization))
          = lowerUTF8({org:String}))
  AND ({product:String} = '' OR lowerUTF8(f.product) = lowerUTF8({product:String}))
  AND ({port:UInt16} = 0 OR f.port = {port:UInt16})
  AND ({color:String} = '' OR f.risk_color = {color:String})
GROUP BY lowerUTF8(f.product), if(f.version = '-', '', lowerUTF8(f.version))
ORDER BY instances DESC, product, version
LIMIT {limit:UInt64} OFFSET {offset:UInt64}
