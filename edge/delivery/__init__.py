"""Getting click events from the request path to Kafka: buffer, Kafka, Redis, disk spool."""
