"""Who may stop: SASL/SCRAM principals and least-privilege ACLs per role (``estop security
init``), Kafka refusals turned into one line naming the principal and the missing right, and the
audit trail of every stop, refused attempt and kill switch use."""
