-- Organizations and target counts for the web filters (distinct, sorted): each host
-- under the organization of its latest scan (one row per host, not every scan ever).
SELECT organization, uniqExact(target, ip) AS addresses
FROM latest_host_scans
WHERE organization != ''
GROUP BY organization
ORDER BY organization
