"""Hypothesis profiles of the property tests in this folder.

``ci`` (the default) keeps the whole folder under a minute on two slow cores and writes no
example database; ``dev`` tries ten times as many examples and keeps the database
(``.hypothesis/``) so a failure found once is replayed first next time::

    HYPOTHESIS_PROFILE=dev pytest tests/unit/fuzz

Each test asks for a share of the profile's ``max_examples`` (``settings.default`` is the
loaded profile when the test modules here are imported), sized by how long one example
takes. Loading a profile is global in Hypothesis: hypothesis tests elsewhere in the same
run inherit ``deadline=None`` and keep the example counts they set themselves.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    parent=settings.get_profile("ci"),
    max_examples=1000,
    database=settings.get_profile("default").database,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
