"""The dispatcher (stage ``provider``) and the provider adapters it hands messages to."""
