"""The folders of a Triton-layout model repository: names, paths, what a poll compares.

``<root>/<model>/config.pbtxt`` and ``<root>/<model>/<version>/model.onnx``; a name
must be a plain folder name, and nothing a symlink leads out of the root is read.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from server.core.errors import RepositoryError
from server.core.model_config import CONFIG_FILE

log = logging.getLogger("server.core.repository")

MODEL_CARD_FILE = "model_card.json"
MAX_CARD_BYTES = 1 << 20
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class ModelFolders:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.discovered: tuple[str, ...] = ()  # model folders found by the last scan

    # ---- discovery --------------------------------------------------------------------
    def model_dir(self, name: str) -> Path:
        """The folder of model ``name``, refusing anything that leaves the repository."""
        if not _NAME_RE.fullmatch(name) or name in (".", ".."):
            raise RepositoryError(f"model name {name!r} is not allowed: use letters, digits, "
                                  "'_', '-' and '.', starting with a letter or digit")
        path = self.root / name
        resolved = path.resolve()
        if resolved.parent != self.root:
            raise RepositoryError(f"model {name!r} resolves outside the model repository; "
                                  "symbolic links leading out are refused")
        return path

    def inside(self, name: str, path: Path) -> bool:
        """False (and a warning) for a file or folder that a symlink leads out of the repository."""
        if path.resolve().is_relative_to(self.root):
            return True
        log.warning("model %s: %s leads outside the repository; ignored", name, path)
        return False

    def discover(self) -> list[str]:
        """Model names: folders of the repository that hold a config.pbtxt."""
        names = []
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and (child / CONFIG_FILE).is_file():
                try:
                    self.model_dir(child.name)
                except RepositoryError as exc:
                    log.warning("skipping %s: %s", child, exc)
                    continue
                names.append(child.name)
        self.discovered = tuple(names)
        return names

    def model_card(self, name: str, version: int) -> dict | None:
        """``<model>/<version>/model_card.json`` (what the training pipeline measured), or
        None when there is none, it is too big or it is not a JSON object."""
        path = self.model_dir(name) / str(version) / MODEL_CARD_FILE
        try:
            if not self.inside(name, path) or path.stat().st_size > MAX_CARD_BYTES:
                return None
            card = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("model %s: %s is unreadable (%s); no card served", name, path, exc)
            return None
        return card if isinstance(card, dict) else None

    def fingerprint(self, name: str) -> tuple:
        """What a poll compares: the config's and every version folder's mtimes."""
        path = self.model_dir(name)
        try:
            parts = [(CONFIG_FILE, (path / CONFIG_FILE).stat().st_mtime_ns)]
            for child in sorted(path.iterdir()):
                if child.is_dir() and child.name.isdigit():
                    stamps = [f.stat().st_mtime_ns for f in child.iterdir() if f.is_file()]
                    parts.append((child.name, child.stat().st_mtime_ns, max(stamps, default=0)))
        except OSError:
            return ()
        return tuple(parts)
