"""The edge with click delivery switched off, for measuring what delivery costs.

Benchmark-only: ``cps-bench --ablations`` serves this factory (through the same
``edge.cli.serve`` as the real edge) so that the throughput difference is the
cost of handing clicks to Kafka.  Never deploy it: it drops every click.
"""

from __future__ import annotations

from collections.abc import Iterable

from contracts.records import Record
from edge.app import EdgeApp, create_app
from edge.delivery.kafka_sink import KafkaSink


async def _discard(self: KafkaSink, records: Iterable[Record]) -> list[Record]:
    return []


def create_app_without_delivery() -> EdgeApp:
    KafkaSink.send = _discard  # type: ignore[method-assign]
    return create_app()


def main() -> int:
    import argparse

    from edge.cli import serve

    p = argparse.ArgumentParser(prog="python -m bench.ablation")
    p.add_argument("--server", choices=("granian", "uvicorn"), default="granian")
    p.add_argument("--port", type=int, default=8002)
    args = p.parse_args()
    return serve(args.server, "bench.ablation:create_app_without_delivery", factory=True,
                 host="127.0.0.1", port=args.port, workers=1, log_level="warning")


if __name__ == "__main__":
    raise SystemExit(main())
