-- Per-target page: the target's open ports now (those of its latest completed scan and
-- those a later scan has seen since, and those a narrower one did not cover, as the
-- reports: ddl.sql latest_host_scans, ports_carried). {target}
-- as written (the sorting key's first column: only this target's rows are read, unlike
-- the List report, whose filters also match an address or a hostname); {ip} narrows to
-- one address.
SELECT
    f.target AS target, f.ip AS ip, f.proto AS proto, f.port AS port, f.service AS service,
    f.product AS product, f.version AS version, f.risk_color AS risk_color,
    f.is_cdn_expected AS is_cdn_expected, f.state AS state, f.first_seen AS first_seen,
    f.last_seen AS last_seen
FROM current_findings AS f
INNER JOIN (SELECT ip, ports_scan_id, ports_seen_after FROM latest_host_scans
            WHERE target = {target:String} AND ({ip:String} = '' OR ip = {ip:String})) AS l
    ON l.ip = f.ip
WHERE f.target = {target:String} AND ({ip:String} = '' OR f.ip = {ip:String})
  AND IS_CURRENT(f.last_scan_id, l)
ORDER BY ADDRESS_ORDER(ip), proto, port
