#!{{ venv }}/bin/python
"""Validate pillar `appliance:config` (base64 TOML in argv[1]) with appliance.config.

Managed by Salt (states/appliance/validate.sls). Exit 2 with one line naming the
key, as `appliance config check` does for the file.
"""

import base64
import sys
import tomllib

from appliance.config import ConfigError, parse

try:
    parse(tomllib.loads(base64.b64decode(sys.argv[1]).decode()), "pillar appliance:config")
except (ConfigError, tomllib.TOMLDecodeError) as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
