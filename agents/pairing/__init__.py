"""Pairing: accepted faces matched to anime references (match stage, SQL, the pairer)."""
