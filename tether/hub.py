"""`tether push`: upload a final/ directory to the Hugging Face Hub, a thin call of
huggingface_hub's own create_repo and upload_folder. Every way it can fail without reaching
the Hub (no token, offline mode, no network) is one line and exit code 2."""

from __future__ import annotations

from pathlib import Path

from tether.config import PushConfig
from tether.errors import UserError


def _network_error(e: Exception) -> bool:
    # huggingface_hub 1.x+ talks through httpx (httpx2 in newer releases), older through
    # requests; their transport errors share no base class with OSError
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in (
        "httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3")


def push(cfg: PushConfig) -> str:
    """Create cfg.repo if needed and upload cfg.path into it; returns the commit's URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    path = Path(cfg.path)
    if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
        raise UserError(f"{path}: not a model directory (no config.json or "
                        f"adapter_config.json); push a run's final/")
    if not get_token():
        raise UserError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then "
                        "push again")
    api = HfApi()
    try:
        api.create_repo(cfg.repo, private=cfg.private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=cfg.repo, folder_path=path,
                                   commit_message=cfg.message, repo_type="model")
    except OfflineModeIsEnabled:
        raise UserError(f"cannot push to {cfg.repo}: HF_HUB_OFFLINE is set") from None
    except HfHubHTTPError as e:
        raise UserError(f"the Hub refused the push to {cfg.repo}: "
                        f"{str(e).splitlines()[0]}") from None
    except Exception as e:
        if not _network_error(e):
            raise
        raise UserError(f"cannot reach the Hub to push to {cfg.repo}: {e}") from None
    print(f"pushed {path} to {commit.commit_url}")
    return commit.commit_url
