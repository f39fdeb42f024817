"""``--model_config_file_poll_wait_seconds``: re-read the model config file and apply changes."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from .versions import ModelRegistry, parse_model_config_file

log = logging.getLogger("tf_serving_compat")


class ConfigFilePoller:
    """Re-reads ``--model_config_file`` every N seconds and applies changes (TF Serving's poll)."""

    def __init__(self, path: str | os.PathLike[str], registry: ModelRegistry, wait_seconds: float):
        self.path = Path(path)
        self.registry = registry
        self.wait_seconds = wait_seconds
        self._last = self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-config-poller", daemon=True)

    def _read(self) -> str | None:
        try:
            return self.path.read_text()
        except OSError:
            return None

    def start(self) -> None:
        self._thread.start()

    def check_once(self) -> bool:
        """Apply the file if it changed; a bad file is logged and the running config kept."""
        text = self._read()
        if text is None or text == self._last:
            return False
        self._last = text
        try:
            configs = parse_model_config_file(self.path)
        except (OSError, ValueError) as exc:
            log.error("Ignoring changed model config file: %s", exc)
            return False
        self.registry.reconfigure(configs)
        log.info("Applied changed model config file %s: models %s", self.path, sorted(self.registry.models))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.wait_seconds):
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - the poller must survive anything on disk
                log.exception("Model config poll failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
