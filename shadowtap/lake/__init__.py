"""The lake: pairs (an exchange and the shadow's result, joined) as a Hive-partitioned Parquet
dataset (``schema.py`` the versioned schema and the record <-> row mapping, ``writer.py`` the
dataset writer, ``export.py`` the stage behind ``shadowtap export``), and the NATS JetStream
sink and consumer of the agents (``nats.py``). docs/lake.md is the contract."""
