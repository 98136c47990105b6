"""Hypothesis profiles. CI runs the `repeatable` profile: the same examples on every run, so a landing never
depends on luck. `HYPOTHESIS_PROFILE=explore pytest` draws new random examples (run it with several
`--hypothesis-seed` values before a change to a reader or a metric)."""
import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
