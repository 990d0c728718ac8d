"""Servers nobody here wrote that estop is proven against, fetched from Maven Central into the
cache folder on first use and run privately (own port, own folder, stopped after): Apicurio
Registry, the Confluent wire format's schema registry. The tests start them."""
