"""Herald's development harness: everything the tests, the benchmarks and ``herald
cluster`` share, kept out of the production package ``app``.

- ``cluster``: PostgreSQL, N ``herald serve`` processes and nginx on one port.
- ``loadgen``: a fleet of resuming clients and a rate-limited publisher.
- ``checker``: what was committed against what was received (lost, duplicated, order).
- ``rawws``: a WebSocket on a blocking socket that can stop reading.
- ``pgbin``: the PostgreSQL binaries the ``pgserver`` package ships.
- ``net``: free ports.

It is not installed with ``pip install .``; run it from a checkout.
"""
