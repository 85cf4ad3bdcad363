"""Who may load and unload models: one rule for every transport.

The model control mode must be ``explicit``, and when a repository API key is set
(``header:secret``) the caller must send that header with the secret (compared in
constant time).
"""

from __future__ import annotations

import hmac

from server.core.errors import ModelControlDisabledError, PermissionDeniedError


class RepositoryControl:
    def __init__(self, model_control_mode: str, repository_api_key: str = ""):
        self.mode = model_control_mode
        header, _, self._secret = repository_api_key.partition(":")
        self.header = header.lower()  # gRPC metadata and HTTP headers: lowercase

    def check(self, sent: str | None, action: str, transport: str) -> None:
        """``sent``: the value of ``self.header`` the caller sent, or None."""
        if self._secret and (sent is None or not hmac.compare_digest(
                sent.encode(), self._secret.encode())):
            raise PermissionDeniedError(f"repository {action} is restricted: send the "
                                        f"'{self.header}' header with the key")
        if self.mode != "explicit":
            raise ModelControlDisabledError(
                f"model {action} over {transport} needs --model-control-mode explicit (this "
                f"server runs in {self.mode!r} mode)")
