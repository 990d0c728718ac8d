"""The private MTA estop runs for email: a Postfix instance from Debian's package, configured and
run entirely from the data folder (``<data>/mta``: its own config, queue, log and port; never the
system service), relaying every message to a receiving SMTP server (Postfix's ``smtp-sink``) that
stands for the internet and can be held down so mail waits in Postfix's deferred queue; and the
MTA agent beside it (``agent.py``), through which dispatchers on any host find and cancel mail and
learn its deliveries (Postfix's log, shipped to Kafka)."""
