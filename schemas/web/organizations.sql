-- Organizations and target counts for the web filters (distinct, sorted).
SELECT organization, uniqExact(target, ip) AS addresses
FROM host_scans
WHERE organization != ''
GROUP BY organization
ORDER BY organization
