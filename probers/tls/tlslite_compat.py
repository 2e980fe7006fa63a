"""The one place portwatch imports tlslite-ng, with its import-time warning silenced.

Owns: the tlslite-ng names the TLS prober uses, re-exported. tlslite-ng 0.8's package
``__init__`` imports ``asyncore`` for an integration portwatch never uses; on Python 3.11
that raises a DeprecationWarning at import time, which the test suite (warnings as
errors) would turn into an ImportError. Only that warning, only during this import, is
ignored.

Must not touch: anything else; no logic lives here.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*asyncore", category=DeprecationWarning)
    from tlslite.constants import AlertDescription, GroupName, HandshakeType
    from tlslite.errors import BaseTLSException
    from tlslite.extensions import (
        ClientKeyShareExtension,
        ECPointFormatsExtension,
        KeyShareEntry,
        PaddingExtension,
        SignatureAlgorithmsExtension,
        SNIExtension,
        SupportedGroupsExtension,
        SupportedVersionsExtension,
        TLSExtension,
    )
    from tlslite.mathtls import FFDHE_PARAMETERS
    from tlslite.messages import ClientHello, ServerHello
    from tlslite.utils.codec import DecodeError, Parser

__all__ = [
    "FFDHE_PARAMETERS",
    "AlertDescription",
    "BaseTLSException",
    "ClientHello",
    "ClientKeyShareExtension",
    "DecodeError",
    "ECPointFormatsExtension",
    "GroupName",
    "HandshakeType",
    "KeyShareEntry",
    "PaddingExtension",
    "Parser",
    "SNIExtension",
    "ServerHello",
    "SignatureAlgorithmsExtension",
    "SupportedGroupsExtension",
    "SupportedVersionsExtension",
    "TLSExtension",
]
