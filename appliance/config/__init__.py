"""The box's configuration (step 1 of the split: the module moved here whole)."""

from appliance.config.loader import *  # noqa: F403
from appliance.config.loader import _check_domain  # noqa: F401
