"""Foundation storage: the metadata DB, the artifact store and the model registry."""

from __future__ import annotations

from dataclasses import dataclass

from stratum.config import Settings
from stratum.security.artifact_keys import load_keyring
from stratum.security.home import private_home
from stratum.store.artifacts import (
    ArtifactStore,
    FsspecArtifactStore,
    LocalArtifactStore,
    open_artifacts,
)
from stratum.store.metadata import MetadataStore
from stratum.store.processed import ProcessedIds
from stratum.store.registry import (
    Lineage,
    LoadedModel,
    ModelSpec,
    load_model,
    parse_ref,
    register_model,
)


@dataclass
class Store:
    """The two stores every component needs, opened from one settings object."""

    meta: MetadataStore
    artifacts: ArtifactStore

    @classmethod
    def open(cls, settings: Settings) -> Store:
        assert settings.metadata_url and settings.artifact_url
        private_home(settings.home)  # before anything is created in it: see security.home
        keys = load_keyring(settings.artifact_key_files)  # a bad key file fails before I/O
        return cls(
            meta=MetadataStore.open(settings.metadata_url),
            artifacts=open_artifacts(
                settings.artifact_url, settings.artifact_options, settings.home / "cache",
                keys=keys,
            ),
        )

    def close(self) -> None:
        self.meta.close()


__all__ = [
    "ArtifactStore",
    "FsspecArtifactStore",
    "Lineage",
    "LoadedModel",
    "LocalArtifactStore",
    "MetadataStore",
    "ModelSpec",
    "ProcessedIds",
    "Store",
    "load_model",
    "open_artifacts",
    "parse_ref",
    "register_model",
]
