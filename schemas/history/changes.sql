-- What-changed report: one row per change event (stream_processors/changes.py has the
-- rule), newest first. FINAL: a recomputed or replayed scan's rows merge on the event key.
-- Filters (neutral value = no filter): {since}/{until} bound observed_at; {kinds} any of
-- these kinds (empty = all); {min_severity} at least this severity; {target} what every
-- report's --target matches (schemas/filters.py: as written, hostname, asset, address,
-- prefix or CIDR block; any case); {org} any case; {port}; {host}/{host_ip} one host
-- exactly, as the per-target page asks ('' = any address): the sorting key's first
-- columns, so only that host's rows are read (16 against 270 ms at 3 million events).
SELECT
    kind, severity, target, ip, proto, port, before, after, scan_id, previous_scan_id,
    observed_at, organization, asset
FROM changes AS c FINAL
WHERE observed_at >= {since:DateTime64(3)} AND observed_at < {until:DateTime64(3)}
  AND (empty({kinds:Array(String)}) OR has({kinds:Array(String)}, kind))
  AND ({min_severity:String} = ''
       OR indexOf(['info', 'low', 'medium', 'high', 'critical'], severity)
          >= indexOf(['info', 'low', 'medium', 'high', 'critical'], {min_severity:String}))
  AND ({host:String} = '' OR (c.target = {host:String}
                               AND ({host_ip:String} = '' OR c.ip = {host_ip:String})))
  -- a name matches the event's own (as it was then) or its host's now (latest_host_scans,
  -- as every report's filters: a host an inventory named since was not found by that
  -- name here, where the List and the Summary found it: a review)
  AND (TARGET_MATCHES(c) OR HOST_TARGET_MATCHES(c))
  AND ({org:String} = '' OR lowerUTF8(c.organization) = lowerUTF8({org:String})
       OR (c.target, c.ip) IN (SELECT target, ip FROM latest_host_scans
                               WHERE {org:String} != ''
                                 AND lowerUTF8(organization) = lowerUTF8({org:String})))
  AND ({port:UInt16} = 0 OR port = {port:UInt16})
ORDER BY observed_at DESC, ADDRESS_ORDER(target), ADDRESS_ORDER(ip), proto, port, kind
LIMIT {limit:UInt64}
