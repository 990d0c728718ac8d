"""Java artifacts from Maven Central, resolved once by ``mvn`` into the cache folder: the Kafka
broker's jars (``streams/kafka/broker_recipe``), and for the tests Apicurio Registry
(``deploy/registry``), Kafka Connect and its plugins (``deploy/connect``). A folder appears whole
or not at all (resolved into a staging folder, then renamed), so an interrupted download is
simply redone."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

from streams.exceptions import MavenError
from streams.processes import require


def fetch(pom: Path, target: Path, what: str, expect: str, *, profile: str | None = None,
          properties: Mapping[str, str] | None = None, unpack: bool = False,
          say: Callable[[str], None] = lambda _: None) -> Path:
    """The runtime dependencies of ``pom`` (of its ``profile`` when given) copied into
    ``target`` (``unpack``: the contents of the zips among them instead), unless a file matching
    the glob ``expect`` is there already."""
    if target.is_dir() and any(target.glob(expect)):
        return target
    mvn = require("mvn", f"needed once to fetch {what}: install Maven (apt-get install maven)")
    say(f"resolving {what} from Maven Central (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}-", dir=target.parent))
    command = [mvn, "-q", "-B", "-f", str(pom), *(["-P", profile] if profile else []),
               "dependency:copy-dependencies", "-DincludeScope=runtime",
               *(f"-D{k}={v}" for k, v in (properties or {}).items()),
               f"-DoutputDirectory={staging}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            stdin=subprocess.DEVNULL)
    if result.returncode == 0 and unpack:
        for archive in staging.glob("*.zip"):
            with zipfile.ZipFile(archive) as opened:
                opened.extractall(staging)
            archive.unlink()
    if result.returncode != 0 or not any(staging.glob(expect)):
        shutil.rmtree(staging, ignore_errors=True)
        detail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
        raise MavenError(f"mvn could not resolve {what}: {detail or 'no ' + expect + ' in the result'}")
    shutil.rmtree(target, ignore_errors=True)  # a folder without the expected file: incomplete
    staging.rename(target)
    return target
