"""The ingestion stage: Kafka messages, producer, window rule, window files and consumer."""
