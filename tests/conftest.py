"""Shared fixtures: the real-data folder, an offline Hugging Face hub cache, the slow marker."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Union

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds; deselect with -m 'not slow'")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Return the real-data folder ``../shared/data``, or skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real data folder {SHARED_DATA} is absent, so tests on real files cannot run. "
            "Place the shared data folder next to the repository to run them."
        )
    return SHARED_DATA


class HubCache:
    """A Hugging Face hub cache in a temporary folder, in the layout ``huggingface_hub`` reads.

    Each repo is ``models--{owner}--{name}/snapshots/{commit}/{filename}`` with
    ``refs/main`` containing the commit hash.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, repo_id: str, source: Union[str, Path], filename: str = "model.safetensors") -> Path:
        """Copy ``source`` into the cache as ``filename`` of ``repo_id`` and return the cached path."""
        repo_dir = self.root / ("models--" + repo_id.replace("/", "--"))
        commit = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40 hex digits work as a revision
        snapshot = repo_dir / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(commit)
        target = snapshot / filename
        shutil.copyfile(source, target)
        return target


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubCache:
    """Point ``huggingface_hub`` at an empty cache in ``tmp_path`` and forbid downloads.

    ``huggingface_hub.constants`` reads ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``
    once at import, so the module attributes are patched as well as the
    environment.
    """
    from huggingface_hub import constants

    root = tmp_path / "hf_hub_cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return HubCache(root)
