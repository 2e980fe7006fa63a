"""Hypothesis profiles for the fuzz corpus (issue 11, "Also").

``ci`` (the default): bounded and fast, what ``make test`` runs. ``fuzz``: many more
examples per property, for ``make fuzz`` (HYPOTHESIS_PROFILE=fuzz; 20,000 examples per
property unless PORTWATCH_FUZZ_EXAMPLES says otherwise). No deadline in
either: the machine is shared, and a timing assertion is never a test here.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("PORTWATCH_FUZZ_EXAMPLES", "20000")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
