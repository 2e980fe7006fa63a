"""The two transports that bind the stage functions, side by side.

- ``embedded``: one process, bounded asyncio queues between discovery, a pool of
  identify workers and a batching sink (chdb or a server).
- ``discover_worker`` + ``faust_app`` / ``faust_agents``: the distributed shape:
  kafka-python discovery workers, Faust stage and sink agents over Kafka topics.

Both call the same rules in ``stream_processors.stages``: ``discover_with_retries``
(a shard and its retries), ``identify_port`` (the per-port chain and its failure
rule); the transports only move records. They are built from the settings by the
composition root, ``portwatch.assembly``.
"""
