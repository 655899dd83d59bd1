"""Finding an HF checkpoint: a local directory, or `facebook/opt-<size>` in the Hugging Face cache."""

from __future__ import annotations

import os
import socket
import urllib.parse

from opt_jax.config import SIZES
from opt_jax.errors import CheckpointError
from opt_jax.errors import ConfigError

# What a conversion needs from a hub repository: weights, configs, tokenizer files.
_PATTERNS = ["*.json", "*.txt", "*.model"]


def repo_id_for(source: str) -> str:
    """'66b' -> 'facebook/opt-66b'; 'org/name' stays as is; anything else is refused."""
    name = source.lower().removeprefix("opt-")
    if name in SIZES:
        return f"facebook/opt-{name}"
    if source.count("/") == 1 and not source.startswith((".", "/")):
        return source
    raise ConfigError(f"{source!r} is neither an existing directory nor a known OPT size "
                      f"({', '.join(SIZES)}) nor a hub repository id 'org/name'")


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    url = urllib.parse.urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_checkpoint(source: str, cache_dir: str | None = None) -> str:
    """A local directory holding the checkpoint: `source` itself, the cached snapshot, or a fresh download."""
    if os.path.isdir(source):
        return source
    repo_id = repo_id_for(source)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = cache_dir or constants.HF_HUB_CACHE
    try:
        return snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or not _hub_reachable(constants.ENDPOINT):
        reason = "HF_HUB_OFFLINE is set" if offline else f"{constants.ENDPOINT} is unreachable"
        raise CheckpointError(f"{repo_id} is not in the local Hugging Face cache (looked in {where}) and "
                              f"cannot be downloaded ({reason}); pass --hf_path DIR with a local checkpoint")
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(repo_id)
    weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
    return snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=_PATTERNS + weights)
