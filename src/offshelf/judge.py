"""Judge ≠ guide: the one check that the network judging samples is none of the networks that
make them. Config validation (:func:`offshelf.config.check_judge`), the workflow's and the
``offshelf`` command's tuner (:func:`offshelf.tuning.run_tune`) all call
:func:`check_judge_is_not_a_guide`."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from offshelf.backends.base import FileSource, Pretrained, Trained


#: the roles of :meth:`Backend.files` that hold classifiers (guiding only the settings that name them)
CLASSIFIER_ROLES = ("offshelf", "finetuned")


class JudgeIsGuideError(ValueError):
    """The evaluation network is one of the networks that make the samples (a guiding classifier,
    or the denoiser): FID and accuracy would reward samples for fooling their own judge. The
    message names both files."""


def _describe(source: FileSource) -> str:
    return f"trained role {source.role!r}" if isinstance(source, Trained) else f"registry file {source.name!r}"


def _same_network(guide: FileSource, judge: FileSource, path_of: Callable[[FileSource], str | None] | None,
                  registry_file: Any) -> str | None:
    """Why ``guide`` and ``judge`` are one file (the reason, for the error), or None.

    Identical sources, then identical paths (``path_of``: where the workflow finds a source; None
    where it is not known), then identical content: the registry's sha256 pins of two pretrained
    files, else, when both files exist with the same size (a cheap stat first: different networks
    differ in size), their sha256 (offshelf.checkpoints.file_sha256, cached by file identity)."""
    if guide == judge:
        return "the same source"
    if path_of is None:
        return None
    guide_path, judge_path = path_of(guide), path_of(judge)
    if guide_path and judge_path and os.path.realpath(guide_path) == os.path.realpath(judge_path):
        return f"the same file {guide_path}"
    from offshelf.checkpoints import file_sha256, get

    if isinstance(guide, Pretrained) and isinstance(judge, Pretrained):
        pins = [get(source.name, registry_file).sha256 for source in (guide, judge)]
        if pins[0] is not None and pins[0] == pins[1]:
            return f"files pinned to the same sha256 {pins[0]} in the checkpoint registry"
    if (guide_path and judge_path and os.path.isfile(guide_path) and os.path.isfile(judge_path)
            and os.path.getsize(guide_path) == os.path.getsize(judge_path)):
        digest = file_sha256(guide_path)
        if digest == file_sha256(judge_path):
            return f"identical files {guide_path} and {judge_path} (sha256 {digest})"
    return None


def check_judge_is_not_a_guide(backend, settings: Iterable, path_of: Callable[[FileSource], str | None] | None = None,
                               registry_file: Any = None) -> None:
    """Refuse a plan in which the network that judges samples (``backend.evaluation_files()``) is
    one of the networks a setting of ``settings`` samples with: its guiding classifiers
    (``backend.guiding_files(setting)``) and its other, non-classifier files (the denoiser): same source, same
    file, or same content (see :func:`_same_network`). Raises :class:`JudgeIsGuideError` naming
    the setting and both files."""
    judges = backend.evaluation_files()
    seen: set[tuple[FileSource, FileSource]] = set()
    for setting in settings:
        guiding = backend.guiding_files(setting)
        # the classifiers that guide it, and its other networks (denoiser, decoder...); a classifier
        # a job loads but this setting does not guide with is not one of its networks
        makers = {role: source for role, source in backend.files(setting).items()
                  if role in guiding or role not in CLASSIFIER_ROLES}
        for role, source in makers.items():
            for judge_role, judge in judges.items():
                if (source, judge) in seen:
                    continue
                seen.add((source, judge))
                reason = _same_network(source, judge, path_of, registry_file)
                if reason:
                    kind = "guiding classifier" if role in guiding else "sampling network"
                    raise JudgeIsGuideError(
                        f"setting {setting.name}: its {kind} {role!r} ({_describe(source)}) and the "
                        f"evaluation network {judge_role!r} ({_describe(judge)}) are {reason}; the network that "
                        f"judges samples must never guide them: give the judge or the guide another file")


def paths_by_source(backend, settings: Iterable, sampling_files: dict[str, str],
                    judging_files: dict[str, str]) -> Callable[[FileSource], str | None]:
    """``path_of`` for :func:`check_judge_is_not_a_guide` from a job's role -> path maps (the
    tuner's): each source of ``settings`` and of the judge, where its role's file is."""
    where: dict[FileSource, str] = {}
    for setting in settings:
        for role, source in backend.files(setting).items():
            if role in sampling_files:
                where[source] = sampling_files[role]
    for role, source in backend.evaluation_files().items():
        if role in judging_files:
            where.setdefault(source, judging_files[role])
    return where.get
