"""Analytics: exactly one outcome per message in a store, the report, the export."""
