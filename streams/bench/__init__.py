"""The benchmark harness: every figure next to a raw-Kafka baseline measured in the same run."""
