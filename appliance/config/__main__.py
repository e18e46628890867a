"""`python -m appliance.config --docs | --check FILE` (Makefile `docs`, Salt's check_cmd)."""

import sys

from appliance.config import ConfigError, load, reference_markdown

if sys.argv[1:] == ["--docs"]:
    sys.stdout.write(reference_markdown())
elif len(sys.argv) == 3 and sys.argv[1] == "--check":
    try:
        load(sys.argv[2])
    except ConfigError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
else:
    print("usage: python -m appliance.config --docs | --check FILE", file=sys.stderr)
    sys.exit(64)
