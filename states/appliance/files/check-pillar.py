#!{{ venv }}/bin/python
"""Validate pillar `appliance:config` (rendered to the TOML file in argv[1]) with appliance.config.

Managed by Salt (states/appliance/validate.sls), used as check_cmd. Exit 2 with
one line naming the key, as `appliance config check` does for the real file.
"""

import sys
import tomllib

from appliance.config import ConfigError, parse

try:
    with open(sys.argv[1], "rb") as fh:
        parse(tomllib.load(fh), "pillar appliance:config")
except (ConfigError, tomllib.TOMLDecodeError) as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
