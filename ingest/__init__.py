"""MQTT collectors, decoders, batching, the TimescaleDB sink, metrics, runner and CLI."""
