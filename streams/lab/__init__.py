"""Everything that exercises estop rather than being estop: the demo (``estop demo``) and the
process harness it shares with the tests, the benchmark (``estop bench``), and local stand-ins of
the SMSC, web push service and FCM that the demo and the tests send to. The product (``estop
worker``, ``stop``, ``control``, ``report``) never imports from here."""
