"""The human review page: a queue of pending pairs and a reviewer's decisions.

:mod:`agents.review.store` holds the SQL reads (testable without HTTP), building what the page
renders with :mod:`agents.review.views`; :mod:`agents.review.decisions` writes a reviewer's
decision. :mod:`agents.review.web` is the login page, the page and its JSON API
(Starlette, served on uvicorn by :mod:`agents.review.server`), after
:mod:`agents.review.checks` has checked each request;
:mod:`agents.review.accounts` holds the reviewer accounts that log in.

Its errors (``ReviewError`` and below) are drawn with the rest in :mod:`agents.errors`; a
database failure stays a :class:`~agents.errors.StorageError` (HTTP 500).
"""
