-- Ciphers report: per TLS port, the latest probe's status (a port that could not
-- be tested says so), protocol versions, accepted suites with their grades, and
-- the leaf certificate's facts, and the port's JARM fingerprint.
WITH
    probes AS (
        SELECT target, ip, port,
               argMax(scan_id, observed_at) AS scan_id,
               argMax(status, observed_at) AS status,
               argMax(error, observed_at) AS error,
               argMax(versions, observed_at) AS versions,
               argMax(grade, observed_at) AS grade,
               argMax(grade_reason, observed_at) AS grade_reason,
               max(observed_at) AS tested_at
        FROM tls_probes GROUP BY target, ip, port
    ),
    suites AS (
        SELECT target, ip, port, scan_id,
               arraySort(x -> (x.1, x.8), groupArray((tls_version, iana_name, openssl_name,
                         strength, reason, kex_group, kex_bits, preference))) AS suites,
               countIf(strength = 'weak') AS weak_suites
        FROM tls_ciphers FINAL GROUP BY target, ip, port, scan_id
    ),
    certs AS (
        SELECT target, ip, port, scan_id,
               any(subject) AS subject, any(issuer) AS issuer, any(sans) AS sans,
               any(not_after) AS not_after, any(key_type) AS key_type, any(key_bits) AS key_bits,
               any(is_self_signed) AS is_self_signed, any(is_expired) AS is_expired,
               any(is_hostname_match) AS is_hostname_match
        FROM certificates FINAL WHERE chain_position = 0
        GROUP BY target, ip, port, scan_id
    ),
    owners AS (
        SELECT target, ip, argMax(organization, finished_at) AS organization
        FROM host_scans GROUP BY target, ip
    ),
    -- The JARM fingerprint identification took on the port (issue 15).
    fingerprints AS (
        SELECT target, ip, port, jarm FROM current_findings WHERE proto = 'tcp'
    )
SELECT
    probes.target AS target, probes.ip AS ip, probes.port AS port,
    probes.status AS status, probes.error AS error, probes.versions AS versions,
    probes.grade AS grade, probes.grade_reason AS grade_reason,
    suites.suites AS suites, suites.weak_suites AS weak_suites,
    certs.subject AS cert_subject, certs.issuer AS cert_issuer, certs.sans AS cert_sans,
    certs.not_after AS cert_not_after, certs.key_type AS cert_key_type,
    certs.key_bits AS cert_key_bits, certs.is_self_signed AS cert_self_signed,
    certs.is_expired AS cert_expired, certs.is_hostname_match AS cert_hostname_match,
    fingerprints.jarm AS jarm,
    probes.tested_at AS tested_at
FROM probes
LEFT JOIN suites ON suites.target = probes.target AND suites.ip = probes.ip
                AND suites.port = probes.port AND suites.scan_id = probes.scan_id
LEFT JOIN certs ON certs.target = probes.target AND certs.ip = probes.ip
               AND certs.port = probes.port AND certs.scan_id = probes.scan_id
LEFT JOIN owners ON owners.target = probes.target AND owners.ip = probes.ip
LEFT JOIN fingerprints ON fingerprints.target = probes.target AND fingerprints.ip = probes.ip
                      AND fingerprints.port = probes.port
WHERE ({target:String} = '' OR probes.target = {target:String} OR probes.ip = {target:String})
  AND ({org:String} = '' OR owners.organization = {org:String})
  AND ({port:UInt16} = 0 OR probes.port = {port:UInt16})
  AND ({grade:String} = '' OR probes.grade = {grade:String})
ORDER BY target, ip, port
LIMIT {limit:UInt64} OFFSET {offset:UInt64}
