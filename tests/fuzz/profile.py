"""How hard the fuzzer tries: a bounded profile for CI, a long one for `make fuzz`.

FUZZ_PROFILE=ci (the default) keeps the whole tests/fuzz run within about 90 s on a
2-core machine; FUZZ_PROFILE=long tries far more inputs per operation and longer
stateful scenarios. FUZZ_EXAMPLES=N overrides the per-operation example count of either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class FuzzProfile:
    name: str
    examples: int  # generated requests per operation (stateless)
    scenarios: int  # stateful scenarios (chains of linked calls)
    steps: int  # the longest scenario


_PROFILES = {
    "ci": FuzzProfile("ci", examples=12, scenarios=20, steps=8),
    "long": FuzzProfile("long", examples=200, scenarios=300, steps=12),
}


def current() -> FuzzProfile:
    profile = _PROFILES[os.environ.get("FUZZ_PROFILE", "ci")]
    if examples := os.environ.get("FUZZ_EXAMPLES"):
        profile = FuzzProfile(profile.name, int(examples), profile.scenarios, profile.steps)
    return profile
