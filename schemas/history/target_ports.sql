-- Per-target page: the target's open ports now (those of its latest completed scan, as the
-- reports: ddl.sql latest_host_scans). {target} as written (the
-- sorting key's first column: only this target's rows are read, unlike the List report,
-- whose filters also match an address or a hostname); {ip} narrows to one address.
SELECT
    f.target AS target, f.ip AS ip, f.proto AS proto, f.port AS port, f.service AS service,
    f.product AS product, f.version AS version, f.risk_color AS risk_color,
    f.is_cdn_expected AS is_cdn_expected, f.first_seen AS first_seen, f.last_seen AS last_seen
FROM current_findings AS f
WHERE f.target = {target:String} AND ({ip:String} = '' OR f.ip = {ip:String})
  AND (f.ip, f.last_scan_id) IN (
      SELECT ip, ports_scan_id FROM latest_host_scans
      WHERE target = {target:String} AND ({ip:String} = '' OR ip = {ip:String}))
ORDER BY ip, proto, port
