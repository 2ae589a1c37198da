"""beiflow: IoT and Beidou (BDS) telemetry from MQTT into TimescaleDB."""

__version__ = "0.1.0"
