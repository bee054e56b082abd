"""Which policies are in force: a default, per-source overrides and shadow candidates, reloaded on edit.

Policy editors change YAML files while workers run. `PolicyFiles` watches the files the settings name
with a cheap periodic check (a `stat` per file, at most every `reload_interval_s`), re-reads a file only
when its size or modification time changed, and builds a new `PolicyBook` when a file's *meaning* (its
hash) changed. A file that no longer validates is refused with file, field and problem, and the last
good version of that file stays in force; a worker never starts on a broken file, though. So is an
edit that changes what a policy means but keeps its `version`: verdicts name their policy by version,
and two meanings under one version would make every report by version ambiguous. The caller
swaps books between batches, so one batch is always decided under one book.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from moderation.exceptions import PolicyError
from moderation.policy import LoadedPolicy, load_policy
from moderation.settings import PolicySettings


@dataclass(frozen=True)
class PolicyBook:
    """The policies one batch is decided under."""

    default: LoadedPolicy
    by_source: Mapping[str, LoadedPolicy] = field(default_factory=dict)
    shadows: tuple[LoadedPolicy, ...] = ()

    def for_source(self, source: str) -> LoadedPolicy:
        """The policy that decides events from `source` (the event's `source` field): its own, or the default."""
        return self.by_source.get(source, self.default)

    def in_force(self) -> list[LoadedPolicy]:
        """Every policy that decides some events, each once (by hash)."""
        return list({p.sha256: p for p in (self.default, *self.by_source.values())}.values())

    def every_policy(self) -> list[LoadedPolicy]:
        """The policies in force and the shadows: everything whose text embeddings must be ready."""
        return list({p.sha256: p for p in (*self.in_force(), *self.shadows)}.values())


@dataclass(frozen=True)
class ReloadReport:
    applied: tuple[LoadedPolicy, ...] = ()  # new versions now in force (or in shadow)
    refused: tuple[PolicyError, ...] = ()  # edits that did not validate: the previous version stays
    restored: tuple[str, ...] = ()  # files edited back to the version in force after a refused edit

    def __bool__(self) -> bool:
        return bool(self.applied or self.refused or self.restored)


_Signature = tuple[int, int, int]  # (inode, size, mtime_ns): changes when a file is edited or replaced


class PolicyFiles:
    """The policy files named by `PolicySettings`, loaded and watched for edits."""

    def __init__(self, settings: PolicySettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = settings.reload_interval_s
        self._clock = clock
        self._default_path = str(settings.path)
        self._source_paths = {source: str(path) for source, path in settings.sources.items()}
        self._shadow_paths = [str(path) for path in settings.shadow]
        paths = dict.fromkeys([self._default_path, *self._source_paths.values(), *self._shadow_paths])
        # Loaded up front: a worker refuses to start on a broken file (raises PolicyError).
        self._loaded: dict[str, LoadedPolicy] = {}
        self._seen: dict[str, _Signature | None] = {}
        for path in paths:
            self._seen[path] = _signature(path)
            self._loaded[path] = load_policy(path)
        self._checked_at = self._clock()
        self.book = self._build()
        self._vet: Callable[[LoadedPolicy], object] | None = None

    def vet_with(self, vet: Callable[[LoadedPolicy], object]) -> None:
        """Also refuse an edit that `vet` raises PolicyError for: what only the model can check (trained
        heads of another checkpoint); the scorer's `policy_text`, which also warms the text side."""
        self._vet = vet

    @property
    def paths(self) -> list[str]:
        return list(self._loaded)

    def check(self, force: bool = False) -> ReloadReport:
        """Re-read files edited since the last check (at most every `interval_s`); swap `book` if one changed."""
        if not force and (self.interval_s <= 0 or self._clock() - self._checked_at < self.interval_s):
            return ReloadReport()
        self._checked_at = self._clock()
        applied: list[LoadedPolicy] = []
        refused: list[PolicyError] = []
        restored: list[str] = []
        for path, previous in self._loaded.items():
            signature = _signature(path)
            if signature == self._seen[path]:
                continue
            # Remember the signature even when refusing: a broken file is reported once, not every check.
            self._seen[path] = signature
            try:
                loaded = load_policy(path)
                if self._vet is not None:
                    self._vet(loaded)
            except PolicyError as exc:
                refused.append(exc)
                continue
            if loaded.sha256 != previous.sha256 and loaded.version == previous.version:
                refused.append(unbumped_version(loaded))
                continue
            if loaded.sha256 != previous.sha256:
                self._loaded[path] = loaded
                applied.append(loaded)
            else:  # valid and what is in force (a refused edit undone): nothing to swap, nothing refused
                restored.append(path)
        if applied:
            self.book = self._build()
        return ReloadReport(tuple(applied), tuple(refused), tuple(restored))

    def _build(self) -> PolicyBook:
        return PolicyBook(
            default=self._loaded[self._default_path],
            by_source={source: self._loaded[path] for source, path in self._source_paths.items()},
            shadows=tuple(self._loaded[path] for path in self._shadow_paths),
        )


def unbumped_version(edited: LoadedPolicy) -> PolicyError:
    """The refusal of an edit whose content changed while its `version` did not."""
    return PolicyError(edited.path, [(
        "version",
        f"content changed but version is still {edited.version!r}: give the edit a new version "
        f"(the last good policy stays in force)",
    )])


def _signature(path: str) -> _Signature | None:
    try:
        stat = os.stat(Path(path))  # follows symlinks: a Kubernetes ConfigMap update swaps one
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
