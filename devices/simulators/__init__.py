"""Beidou terminal, RFID gate and sensor simulators publishing over MQTT."""
