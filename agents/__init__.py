"""The Faust app and one agent per stage, over plain typed stage functions.

The stages (``agents.stages``) know nothing of Kafka and are reused by serving.
"""
