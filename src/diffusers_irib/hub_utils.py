"""Telling a local path from a Hub repo id, and not waiting for a Hub that cannot be reached.

huggingface_hub retries a failed connection five times with back-off (about 23 s) before it looks in
its cache. A name like ``runs/projector`` is both a relative path and a valid repo id, so a typo in a
folder name used to cost that wait. Here one short request (at most ``PROBE_TIMEOUT_S``) decides
whether the Hub answers; when it does not, the callers go straight to the cache and say that the
path does not exist locally. Nothing here imports torch: the CLIs use it before ``--help`` returns.
"""

from __future__ import annotations

import os
import re
from typing import Optional

__all__ = [
    "PROBE_TIMEOUT_S",
    "hub_model_id",
    "hub_found_unreachable",
    "hub_reachable",
    "is_cached",
    "is_missing_local_path",
    "looks_like_repo_id",
    "missing_locally",
    "offline_kwargs",
    "source_problem",
    "unreachable_hub_message",
]

#: How long one probe of the Hub endpoint may take before the Hub counts as unreachable.
PROBE_TIMEOUT_S = 1.0

# The Hub's repo-id rules (huggingface_hub.utils.validate_repo_id): [namespace/]name, 1-96 characters of
# letters, digits, "-", "_", "."; no "--" or "..", no leading/trailing "-" or ".".
_REPO_PART = r"[A-Za-z0-9_.\-]{1,96}"
_REPO_ID_RE = re.compile(rf"^(?:{_REPO_PART}/)?{_REPO_PART}$")

#: {endpoint: reachable} of this process: one probe per endpoint, not one per model.
_PROBED: dict[str, bool] = {}


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hub repo id (``name`` or ``namespace/name``)."""
    name = os.fspath(name)
    if not _REPO_ID_RE.match(name) or "--" in name or ".." in name:
        return False
    return not any(part.startswith(("-", ".")) or part.endswith(("-", ".")) for part in name.split("/"))


def hub_model_id(name: Optional[str]) -> Optional[str]:
    """``name`` when it names a Hub model (``namespace/name``, and no existing local path); else None.

    Model cards write ``base_model`` (and link it) only for such ids: a local folder, a path that does
    not exist here, or a base built in memory (None) is no Hub page.
    """
    if not name:
        return None
    name = os.fspath(name)
    if os.path.exists(os.path.expanduser(name)) or name.count("/") != 1 or not looks_like_repo_id(name):
        return None
    return name


def missing_locally(name: str) -> str:
    """Why ``name`` is not a local path, e.g. "no folder 'runs' in /home/me" (for error messages)."""
    path = os.path.abspath(os.path.expanduser(os.fspath(name)))
    parent = os.path.dirname(path)
    while parent and not os.path.isdir(parent):
        path, parent = parent, os.path.dirname(parent)
    return f"there is no {os.path.basename(path)!r} in {parent}"


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub endpoint answers at all (any HTTP status counts), within ``timeout`` seconds.

    False at once in offline mode (``HF_HUB_OFFLINE``). The answer is remembered for the process.
    """
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    endpoint = constants.ENDPOINT
    if endpoint not in _PROBED:
        from huggingface_hub.utils import get_session

        try:
            get_session().head(endpoint, timeout=timeout, follow_redirects=False)
            _PROBED[endpoint] = True
        except Exception:  # refused, unresolvable, timed out, proxy failure: all mean "not now"
            _PROBED[endpoint] = False
    return _PROBED[endpoint]


def hub_found_unreachable() -> bool:
    """Whether this process already probed the Hub endpoint and found it unreachable (probes nothing)."""
    from huggingface_hub import constants

    return _PROBED.get(constants.ENDPOINT) is False


def is_cached(repo_id: str, filename: str, **hub_kwargs) -> bool:
    """Whether ``filename`` of ``repo_id`` is in the Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    kwargs = {k: hub_kwargs[k] for k in ("cache_dir", "revision", "repo_type") if hub_kwargs.get(k) is not None}
    try:
        found = try_to_load_from_cache(repo_id, filename, **kwargs)
    except Exception:  # an id the cache cannot hold
        return False
    return isinstance(found, str)


def unreachable_hub_message(name: str, what: str) -> str:
    """One line for a name that is no local path, not in the cache, with the Hub unreachable."""
    from huggingface_hub import constants

    why = (
        "the Hub is offline (HF_HUB_OFFLINE)"
        if constants.is_offline_mode()
        else f"the Hub ({constants.ENDPOINT}) cannot be reached"
    )
    return (
        f"{what} {name!r} is not a local folder ({missing_locally(name)}), and as a Hub repo id it is not in "
        f"the Hugging Face cache and {why}: check the path"
    )


def is_missing_local_path(name: str) -> bool:
    """A name that cannot be a Hub repo id, or reads as a path (``.``, ``/``, ``~``, or inside a folder
    that exists here): when it does not exist, it is a missing local path, and the Hub is not asked."""
    name = os.fspath(name)
    if os.path.exists(os.path.expanduser(name)):
        return False
    parent = os.path.dirname(name)
    return name.startswith((".", "/", "~")) or bool(parent and os.path.isdir(parent)) or not looks_like_repo_id(name)


def offline_kwargs() -> dict:
    """``{"local_files_only": True}`` when the Hub does not answer (then huggingface_hub would retry for
    ~23 s before using its cache), else ``{}``. In offline mode huggingface_hub is fast on its own."""
    from huggingface_hub import constants

    return {} if constants.is_offline_mode() or hub_reachable() else {"local_files_only": True}


def source_problem(name: str, probe_file: str, what: str, **cache_kwargs) -> Optional[str]:
    """Why ``name`` cannot be loaded now, in one line, or None: a local path exists, or the Hub repo
    is reachable or has ``probe_file`` cached. Answers in at most one short probe of the Hub."""
    from huggingface_hub import constants

    name = os.fspath(name)
    if os.path.exists(os.path.expanduser(name)):
        return None
    if is_missing_local_path(name):
        return f"{what} {name!r} does not exist ({missing_locally(name)})"
    if not constants.is_offline_mode() and hub_reachable():
        return None
    return None if is_cached(name, probe_file, **cache_kwargs) else unreachable_hub_message(name, what)
