"""Every contract of selfie2anime: topic records, SQL tables and their migrations.

Nothing here knows about Kafka clients, models or storage engines; every other package
depends on this one and never the other way round.
"""
