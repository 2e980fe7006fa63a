-- Ciphers report: per TLS port open now, the latest probe's status (a port that could not
-- be tested says so), how TLS was reached (direct / starttls-smtp / ...; a service
-- that offers no upgrade says "no STARTTLS offered"), protocol versions, accepted
-- suites with their grades, the Mozilla profile verdict, and the leaf certificate's
-- facts and posture (trust, name check, days to expiry, weak key / signature),
-- and the port's JARM fingerprint (issue 15).
--
-- Two phases (issue: pages at 100,000 hosts). `page` chooses the page's TLS ports from the
-- few columns the filters and the order read (grade, the owner's names) with its ORDER BY
-- ... LIMIT/OFFSET; the probe's other columns, its suites, certificate and JARM are read
-- for those ports only (all of them for every TLS port took ~0.7 s before the LIMIT). The
-- port sets are on the tables' sorting keys, read with optimize_move_to_prewhere_if_final
-- (it only moves sorting-key conditions under FINAL). Without a limit, every TLS port.
WITH
    owners AS (
        SELECT target, ip, organization, hostname, asset FROM latest_host_scans
    ),
    -- TLS ports open now (as the List: seen in their host's latest completed scan); the
    -- latest probe of a port closed since is history, not a finding, and so is that of a
    -- port whose latest observation is plain text (tls_reachable: neither TLS nor a
    -- service with a STARTTLS upgrade; a --no-tls scan still names them)
    open_now AS (
        SELECT p.target AS target, p.ip AS ip, p.port AS port
        FROM port_latest AS p FINAL
        LEFT JOIN (SELECT target, ip, ports_scan_id, ports_seen_after
                   FROM latest_host_scans) AS l
            ON l.target = p.target AND l.ip = p.ip
        -- (a host with no scan record: its ports, as in the List)
        WHERE p.proto = 'tcp' AND IS_CURRENT(p.scan_id, l) AND p.tls_reachable = 1
    ),
    -- Phase 1: the page's TLS ports (one row per port, kept by a materialized view:
    -- ddl.sql tls_latest; the view is inlined, so only grade is read of its columns)
    page AS (
        SELECT t.target AS target, t.ip AS ip, t.port AS port
        FROM latest_tls_probes AS t
        LEFT JOIN owners ON owners.target = t.target AND owners.ip = t.ip
        WHERE TARGET_MATCHES(owners)
          AND (t.target, t.ip, t.port) IN (SELECT target, ip, port FROM open_now)
          AND ({org:String} = '' OR lowerUTF8(owners.organization) = lowerUTF8({org:String}))
          AND ({port:UInt16} = 0 OR t.port = {port:UInt16})
          AND ({grade:String} = '' OR t.grade = {grade:String})
        ORDER BY ADDRESS_ORDER(target), ADDRESS_ORDER(ip), port
        LIMIT {limit:UInt64} OFFSET {offset:UInt64}
    ),
    -- Phase 2: the page's ports only. A CTE is evaluated again wherever it is named, a
    -- scalar subquery once per query: the page is read once, into one array, and each
    -- set below is built from that array.
    page_ports AS (
        SELECT groupArray((target, ip, port)) AS ports FROM page
    ),
    probes AS (
        SELECT target, ip, port, scan_id, status, error, versions, grade, grade_reason,
               reached_via, is_upgrade_offered, upgrade_note, is_chain_trusted, trust_error,
               days_to_expiry, certificate_warnings, leaf_sha256, profile, profile_version,
               profile_reasons, tested_at
        FROM latest_tls_probes
        WHERE (target, ip, port) IN (SELECT arrayJoin((SELECT ports FROM page_ports)))
    ),
    suites AS (
        SELECT target, ip, port, scan_id,
               arraySort(x -> (x.1, x.8), groupArray((tls_version, iana_name, openssl_name,
                         strength, reason, kex_group, kex_bits, preference))) AS suites,
               countIf(strength = 'weak') AS weak_suites
        FROM tls_ciphers FINAL
        -- only the latest probe's suites: the set is on the sorting key's prefix
        WHERE (target, ip, port, scan_id) IN (SELECT target, ip, port, scan_id FROM probes)
        GROUP BY target, ip, port, scan_id
    ),
    certs AS (
        SELECT target, ip, port, scan_id,
               any(subject) AS subject, any(issuer) AS issuer, any(sans) AS sans,
               any(not_after) AS not_after, any(key_type) AS key_type, any(key_bits) AS key_bits,
               any(is_self_signed) AS is_self_signed, any(is_expired) AS is_expired,
               any(is_hostname_match) AS is_hostname_match,
               any(not_before) AS not_before, any(signature_algorithm) AS signature_algorithm,
               any(name_check) AS name_check, any(expiry_warning) AS expiry_warning,
               any(weak_key) AS weak_key, any(weak_signature) AS weak_signature
        FROM certificates FINAL
        WHERE chain_position = 0
          AND (target, ip, port, scan_id) IN (SELECT target, ip, port, scan_id FROM probes)
        GROUP BY target, ip, port, scan_id
    ),
    -- The JARM fingerprint identification took on the port (issue 15).
    fingerprints AS (
        SELECT target, ip, port, jarm FROM current_findings
        WHERE proto = 'tcp'
          AND (target, ip, port) IN (SELECT arrayJoin((SELECT ports FROM page_ports)))
    )
-- (two helper columns, leaf_days and trust_lapsed, are computed once inside and left out;
-- the inner SELECT starts on this line: schemas.report_page_sql cuts at the last line that
-- starts with SELECT)
SELECT * EXCEPT (leaf_days, trust_lapsed) FROM (SELECT
    probes.target AS target, probes.ip AS ip, probes.port AS port,
    probes.status AS status, probes.error AS error, probes.versions AS versions,
    probes.grade AS grade, probes.grade_reason AS grade_reason,
    suites.suites AS suites, suites.weak_suites AS weak_suites,
    certs.subject AS cert_subject, certs.issuer AS cert_issuer, certs.sans AS cert_sans,
    certs.not_after AS cert_not_after, certs.key_type AS cert_key_type,
    certs.key_bits AS cert_key_bits, certs.is_self_signed AS cert_self_signed,
    -- expired / the expiry warning, from the leaf's notAfter read now (leaf_days,
    -- below): stored as of the scan, a certificate that expired since read "-1 days
    -- left", not expired, "within 7 days" (a review). The thresholds are
    -- probers/tls/posture.py's EXPIRY_WARNING_DAYS. A notAfter that cannot be read (an
    -- unparseable leaf) keeps what the scan stored. (An alias may be named before it
    -- is defined.)
    if(isNull(leaf_days), certs.is_expired, toUInt8(assumeNotNull(leaf_days) < 0))
        AS cert_expired,
    certs.is_hostname_match AS cert_hostname_match,
    certs.not_before AS cert_not_before, certs.signature_algorithm AS cert_signature,
    certs.name_check AS cert_name_check,
    if(isNull(leaf_days), certs.expiry_warning,
       multiIf(assumeNotNull(leaf_days) < 0, 'expired',
               assumeNotNull(leaf_days) < 1, 'expires within 1 day',
               assumeNotNull(leaf_days) < 7, 'expires within 7 days',
               assumeNotNull(leaf_days) < 14, 'expires within 14 days',
               assumeNotNull(leaf_days) < 30, 'expires within 30 days',
               '')) AS cert_expiry_warning,
    certs.weak_key AS cert_weak_key, certs.weak_signature AS cert_weak_signature,
    probes.reached_via AS reached_via, probes.is_upgrade_offered AS is_upgrade_offered,
    probes.upgrade_note AS upgrade_note,
    -- a chain trusted at the scan whose leaf has expired since is not trusted now (the
    -- scan itself would say "expired")
    (cert_expired = 1 AND certs.is_expired = 0 AND probes.is_chain_trusted = 1)
        AS trust_lapsed,
    if(trust_lapsed, 0, probes.is_chain_trusted) AS cert_trusted,
    if(trust_lapsed, 'expired', probes.trust_error) AS cert_trust_error,
    -- whole days left on the leaf, counted now; NULL when there is no leaf or its
    -- notAfter cannot be read (floored: expired an hour ago is -1 day left, not 0)
    if(probes.leaf_sha256 = '', NULL,
       toInt64(floor((toUnixTimestamp64Milli(parseDateTime64BestEffortOrNull(
              certs.not_after, 3, 'UTC')) - toUnixTimestamp64Milli(now64(3))) / 86400000)))
        AS leaf_days,
    -- (the stored count when notAfter cannot be read)
    if(probes.leaf_sha256 = '', NULL, coalesce(leaf_days, probes.days_to_expiry))
        AS cert_days_to_expiry,
    multiIf(probes.status = 'completed' AND probes.is_upgrade_offered = 0, 'no STARTTLS offered',
            -- an enumeration cut short (its budget, a server that stopped answering)
            -- says so, not "tested": its suites are those it got to
            probes.status = 'completed' AND startsWith(probes.error, 'partial'), 'partial',
            probes.status = 'completed', 'tested', 'could not test') AS outcome,
    -- the warnings, their expiry entry (first: CertificatePosture.warnings) said again
    -- from the count above, as the scan would say it today (and a trust that lapsed)
    if(isNull(leaf_days), probes.certificate_warnings,
       arrayConcat(
           multiIf(cert_expiry_warning = '', CAST([], 'Array(String)'),
                   cert_expiry_warning = 'expired', ['certificate expired'],
                   [concat('certificate ', cert_expiry_warning, ' (',
                           toString(assumeNotNull(leaf_days)), ' days left)')]),
           arrayFilter(w -> NOT (w = 'certificate expired'
                                 OR startsWith(w, 'certificate expires within '))
                            AND w != 'name mismatch',
                       probes.certificate_warnings),
           -- in the scan's order: untrusted before a name mismatch (worst first)
           if(trust_lapsed, ['untrusted: expired'], CAST([], 'Array(String)')),
           arrayFilter(w -> w = 'name mismatch', probes.certificate_warnings)))
        AS cert_warnings,
    probes.leaf_sha256 AS cert_sha256,
    probes.profile AS profile, probes.profile_version AS profile_version,
    probes.profile_reasons AS profile_reasons,
    fingerprints.jarm AS jarm,
    probes.tested_at AS tested_at
FROM probes
LEFT JOIN suites ON suites.target = probes.target AND suites.ip = probes.ip
                AND suites.port = probes.port AND suites.scan_id = probes.scan_id
LEFT JOIN certs ON certs.target = probes.target AND certs.ip = probes.ip
               AND certs.port = probes.port AND certs.scan_id = probes.scan_id
LEFT JOIN fingerprints ON fingerprints.target = probes.target AND fingerprints.ip = probes.ip
                      AND fingerprints.port = probes.port
)
ORDER BY ADDRESS_ORDER(target), ADDRESS_ORDER(ip), port
SETTINGS optimize_move_to_prewhere_if_final = 1
