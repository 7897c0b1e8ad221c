"""`python -m hass_sglang.bench run|report|compare`: the same as `hass bench` (bench/commands.py)."""

import sys

from hass_sglang.bench.commands import main

sys.exit(main())
