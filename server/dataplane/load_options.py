"""The parameters a load or unload call may carry, read alike for every face.

Triton's model-repository extension lets a load send ``config``: a ModelConfig in JSON
that replaces config.pbtxt for that load (core.plans.plan_from_override). Its
``file:<path>`` parameters (model files sent in the call) are refused: models load from
the repository's folders. ``unload_dependents`` changes nothing here (no ensembles).
"""

from __future__ import annotations

import json

from server.core.errors import InvalidInputError

CONFIG = "config"
_HARMLESS = frozenset({"unload_dependents"})


def load_config(action: str, parameters: dict[str, object]) -> str | None:
    """The config override a ``load`` sends (None: the files'); anything else refused."""
    allowed = _HARMLESS | ({CONFIG} if action == "load" else frozenset())
    unsupported = sorted(set(parameters) - allowed)
    if unsupported:
        shown = [name[:100] for name in unsupported[:5]]
        raise InvalidInputError(
            f"{action} parameters {shown} are not supported: model files load from the "
            "repository; a load may send \"config\" (a ModelConfig as JSON) to replace "
            "config.pbtxt for that load")
    if action != "load" or CONFIG not in parameters:
        return None
    value = parameters[CONFIG]
    if isinstance(value, dict):  # sent as a JSON object rather than a string holding one
        return json.dumps(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"load parameter \"config\" must be a string holding a "
                                f"ModelConfig as JSON, got {type(value).__name__} "
                                f"{str(value)[:100]!r}")
    return value
