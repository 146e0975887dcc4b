"""The human review page: a queue of pending pairs, a reviewer's decisions, and their errors.

:mod:`agents.review.store` holds the SQL reads (testable without HTTP), building what the page
renders with :mod:`agents.review.views`; :mod:`agents.review.decisions` writes a reviewer's
decision. :mod:`agents.review.server` serves the page and its JSON API from the standard
library's HTTP server, after :mod:`agents.review.checks` has checked each request.

    PipelineError
     └── ReviewError
          ├── NotFound (LookupError)          no such pair (or blob); HTTP 404
          ├── Conflict (RuntimeError)         another reviewer decided the pair since the
          │                                   page loaded it; HTTP 409, names who
          └── InvalidDecision (ValueError)    the decision itself is wrong (unknown action,
                                              a reference that is not a candidate, a label
                                              outside the vocabulary); HTTP 400

A database failure stays a :class:`~agents.errors.StorageError` (HTTP 500).
"""

from __future__ import annotations

from agents.errors import PipelineError


class ReviewError(PipelineError):
    """Base class for the errors of the review page."""


class NotFound(ReviewError, LookupError):
    """The pair (or blob) asked for does not exist."""


class Conflict(ReviewError, RuntimeError):
    """The pair changed since the reviewer saw it; reload it before deciding.

    Example::

        raise Conflict("pair 4f.. was approved by human:bob at 2026-11-25T10:00:00+00:00")
    """


class InvalidDecision(ReviewError, ValueError):
    """A decision that cannot be applied as given; the message names the fix."""
