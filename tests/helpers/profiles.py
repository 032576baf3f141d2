"""The test suite's hypothesis settings: a fast tier and a slow one.

`FAST` (the default tier) and `SLOW` (`pytest -m slow`, and the few-example
copies that start from it); RECC_FAST_EXAMPLES and RECC_SLOW_EXAMPLES change
their example counts.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "recc-fast", max_examples=int(os.environ.get("RECC_FAST_EXAMPLES", "30")), **_COMMON
)
settings.register_profile(
    "recc-slow", max_examples=int(os.environ.get("RECC_SLOW_EXAMPLES", "400")), **_COMMON
)
FAST = settings(settings.get_profile("recc-fast"))
SLOW = settings(settings.get_profile("recc-slow"))
