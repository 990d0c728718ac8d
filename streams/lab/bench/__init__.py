"""The benchmark (``estop bench``): every figure next to a raw-Kafka baseline measured in the same
run. Its plot needs matplotlib, which only the bench extra installs."""

import importlib.util

from streams.exceptions import MissingExtraError

if importlib.util.find_spec("matplotlib") is None:
    raise MissingExtraError("the benchmark", "bench")
