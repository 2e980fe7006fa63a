-- What-changed report: one row per change event (stream_processors/changes.py has the
-- rule), newest first. FINAL: a recomputed or replayed scan's rows merge on the event key.
-- Filters (neutral value = no filter): {since}/{until} bound observed_at; {kinds} any of
-- these kinds (empty = all); {min_severity} at least this severity; {target} as written,
-- address or hostname; {org}; {port}.
SELECT
    kind, severity, target, ip, proto, port, before, after, scan_id, previous_scan_id,
    observed_at, organization, asset
FROM changes FINAL
WHERE observed_at >= {since:DateTime64(3)} AND observed_at < {until:DateTime64(3)}
  AND (empty({kinds:Array(String)}) OR has({kinds:Array(String)}, kind))
  AND ({min_severity:String} = ''
       OR indexOf(['info', 'low', 'medium', 'high', 'critical'], severity)
          >= indexOf(['info', 'low', 'medium', 'high', 'critical'], {min_severity:String}))
  AND ({target:String} = '' OR target = {target:String} OR ip = {target:String}
       OR hostname = {target:String})
  AND ({org:String} = '' OR organization = {org:String})
  AND ({port:UInt16} = 0 OR port = {port:UInt16})
ORDER BY observed_at DESC, target, ip, proto, port, kind
LIMIT {limit:UInt64}
