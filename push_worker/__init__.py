"""The push worker: webhook deliveries from the ledger outbox (see push_worker.service)."""
