"""Servers nobody here wrote that estop is proven against, fetched from Maven Central into the
cache folder on first use and run privately (own port, own folder, stopped after): Apicurio
Registry (the Confluent wire format's schema registry) and Kafka Connect with the Debezium JDBC
sink (a downstream consumer of estop's events). The tests start them; docs/consumers.md shows
how a team runs its own."""
