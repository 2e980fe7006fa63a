"""Grading against Mozilla's server-side TLS guidelines, version 5.7.

Owns: ``PROFILES`` (modern / intermediate / old, transcribed from the guidelines'
published configuration, https://ssl-config.mozilla.org/guidelines/5.7.json and
https://wiki.mozilla.org/Security/Server_Side_TLS) and ``assess_profile``: the strictest
profile a port complies with, or "non-compliant", with the reasons it misses the next
stricter one (or "old", for a non-compliant port).

A port complies with a profile when every protocol version it accepts is one the profile
allows, every suite it accepts is in the profile's list (TLS 1.3 suites included), its
finite-field DH groups are at least the profile's size, every named elliptic curve it
took for a key exchange is one the guidelines list (X25519, P-256, P-384, in every
profile; other groups, X448 or a post-quantum hybrid, are not judged), and its leaf key is
one the profile accepts (modern: ECDSA; intermediate and old: ECDSA or RSA >= 2048; an
ECDSA key on P-256 or P-384 only). Compliance is judged on what the server *accepts*; ordering and
the guidelines' HSTS / OCSP / lifespan advice are out of scope.

Must not touch: the network, records (``commands.fold`` copies the verdict onto them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from probers.tls.suites import TlsVersion

GUIDELINES_VERSION = "5.7"

_TLS13 = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                    "TLS_CHACHA20_POLY1305_SHA256"})  # fmt: skip
_INTERMEDIATE_12 = frozenset({
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
})  # fmt: skip
_OLD_EXTRA = frozenset({
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384", "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256", "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256", "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA256", "TLS_RSA_WITH_AES_256_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_CBC_SHA", "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
})  # fmt: skip


# The guidelines' tls_curves and certificate_curves, the same in all three profiles, as
# OpenSSL and cryptography name them (prime256v1 is secp256r1)
_GROUPS = frozenset({"x25519", "secp256r1", "prime256v1", "secp384r1"})
_CERT_CURVES = frozenset({"secp256r1", "prime256v1", "secp384r1"})
# a named elliptic curve alone (secp192r1, sect163k1, prime256v1, brainpoolP256r1), not a
# hybrid that embeds one (SecP256r1MLKEM768)
_NAMED_CURVE = re.compile(r"sec[pt]\d+[rk]\d|prime\d+v\d|brainpoolp\d+[rt]1(?:tls13)?",
                          re.IGNORECASE)


def _curve_outside(group: str, allowed: frozenset[str]) -> bool:
    """A named elliptic curve the guidelines do not list ("" and other groups: no)."""
    return bool(_NAMED_CURVE.fullmatch(group)) and group.lower() not in allowed


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    versions: frozenset[TlsVersion]
    suites: frozenset[str]  # IANA names
    min_dh_bits: int
    leaf_keys: tuple[str, ...]  # "EC" and/or "RSA"
    min_rsa_bits: int = 2048


PROFILES: tuple[Profile, ...] = (
    Profile("modern", frozenset({TlsVersion.TLS_1_3}), _TLS13, 0, ("EC",)),
    Profile("intermediate", frozenset({TlsVersion.TLS_1_2, TlsVersion.TLS_1_3}),
            _TLS13 | _INTERMEDIATE_12, 2048, ("EC", "RSA")),
    Profile("old", frozenset({TlsVersion.TLS_1_0, TlsVersion.TLS_1_1, TlsVersion.TLS_1_2,
                              TlsVersion.TLS_1_3}),
            _TLS13 | _INTERMEDIATE_12 | _OLD_EXTRA, 1024, ("EC", "RSA")),
)  # fmt: skip
NON_COMPLIANT = "non-compliant"
_MAX_REASONS = 6


@dataclass(frozen=True, slots=True)
class AcceptedFacts:
    """One accepted suite as the profile needs it."""

    version: TlsVersion
    iana_name: str
    dh_bits: int = 0  # finite-field DH prime size; 0 = not DHE or unknown
    ec_group: str = ""  # the named group of its key exchange, as the handshake said it


@dataclass(frozen=True, slots=True)
class ProfileVerdict:
    profile: str  # modern / intermediate / old / non-compliant
    reasons: tuple[str, ...]
    version: str = GUIDELINES_VERSION


def deviations(
    profile: Profile,
    versions: Iterable[TlsVersion],
    suites: Sequence[AcceptedFacts],
    leaf_key: tuple[str, int] | None,
) -> list[str]:
    """Why the port does not comply with ``profile`` (empty = it complies)."""
    found: list[str] = []
    for version in versions:
        if version not in profile.versions:
            found.append(f"{version.label} enabled")
    for suite in suites:
        if suite.version in profile.versions and suite.iana_name not in profile.suites:
            found.append(f"{suite.version.label} {suite.iana_name} not in the {profile.name} list")
    weak_dh = [s.dh_bits for s in suites if 0 < s.dh_bits < profile.min_dh_bits]
    if weak_dh:
        found.append(f"DH group of {min(weak_dh)} bits (< {profile.min_dh_bits})")
    curves = sorted({s.ec_group for s in suites if _curve_outside(s.ec_group, _GROUPS)})
    if curves:  # secp192r1 taken stood beside "intermediate" (a review)
        found.append(f"EC group {', '.join(curves)} accepted (wants X25519, P-256 or P-384)")
    if leaf_key is not None:
        kind, bits = leaf_key
        family = "EC" if kind.startswith("EC") else "RSA" if kind == "RSA" else kind
        if family not in profile.leaf_keys:
            found.append(f"{kind} certificate key ({profile.name} wants "
                         f"{' or '.join(profile.leaf_keys)})")  # fmt: skip
        elif family == "RSA" and bits < profile.min_rsa_bits:
            found.append(f"RSA {bits}-bit certificate key (< {profile.min_rsa_bits})")
        elif family == "EC" and _curve_outside(kind.removeprefix("EC").strip(), _CERT_CURVES):
            # a P-521 key was "modern" (a review)
            found.append(f"{kind} certificate key (wants P-256 or P-384)")
    return found


def _bounded(reasons: list[str]) -> tuple[str, ...]:
    if len(reasons) <= _MAX_REASONS:
        return tuple(reasons)
    return (*reasons[:_MAX_REASONS], f"and {len(reasons) - _MAX_REASONS} more")


def assess_profile(
    versions: Sequence[TlsVersion],
    suites: Sequence[AcceptedFacts],
    leaf_key: tuple[str, int] | None = None,
) -> ProfileVerdict | None:
    """The strictest profile the port meets and why not the one above; None without suites.

    ``leaf_key``: (key type as ``certs`` names it, e.g. "RSA" / "EC secp256r1", bits).
    """
    if not suites:
        return None
    stricter_misses: list[tuple[str, str]] = []
    for profile in PROFILES:
        missed = deviations(profile, versions, suites, leaf_key)
        if not missed:
            reasons = [f"not {name}: {why}" for name, why in stricter_misses]
            return ProfileVerdict(profile.name, _bounded(reasons) or (f"meets {profile.name}",))
        stricter_misses.append((profile.name, "; ".join(missed[:2])))
    old = PROFILES[-1]
    return ProfileVerdict(NON_COMPLIANT, _bounded(deviations(old, versions, suites, leaf_key)))


__all__ = [
    "GUIDELINES_VERSION",
    "NON_COMPLIANT",
    "PROFILES",
    "AcceptedFacts",
    "Profile",
    "ProfileVerdict",
    "assess_profile",
    "deviations",
]
