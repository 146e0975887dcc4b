"""Pipeline stages as plain typed functions: validate, anonymize, detect, quality, align,
embed, store. None of them imports Kafka; each raises :class:`agents.errors.Rejected` for
an upload that must end ``rejected``.
"""
