"""One catalog item's work as a manifest row: what the tracking and dubbing actors call.

No orchestration here (no Prefect, no Ray): plain functions that take storage, settings and a job,
never raise for a bad item, and return the row the shard commits. Errors we understand become their
class (``ResyncError``; an OS error of a full or failing disk is ``storage_error``); anything else is
``internal`` with the exception's text, so one bad item never fails its shard.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from catalogs.delta import DeltaTables
from catalogs.errors import ErrorClass, ResyncError, classify
from catalogs.plan import PlannedItem
from catalogs.probe import probe_video
from catalogs.schemas import DUBS_TABLE
from catalogs.settings import Settings
from catalogs.storage import Storage
from models.audio_features import AudioFeatures
from models.resyncer import ReSyncer
from models.sync_expert import SyncExpert
from tasks import model_store
from tasks.audio import SAMPLE_RATE, Audio, load_audio
from tasks.decode import chunk_frames
from tasks.dub_plan import fit_audio_length, renderable
from tasks.lipsync import DubInputs, DubResult, dub
from tasks.redraw import warm_generator
from tasks.qa import QA_CROP, OutputObserver, item_metrics, sync_metrics, word_error_rate
from tasks.speech import SpeechTimer
from tasks.sync import load_sync_expert
from tasks.track import TrackResult, track_cached
from tasks.training_data import crop_matrices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemJob:
    """One item to dub: small enough to cross the object store (paths and ids, never media)."""

    item: PlannedItem
    run_id: str
    shard_id: str
    model_uri: str
    output_uri: str
    render_config: str


@dataclass(frozen=True)
class TrackOutcome:
    """A video's track artifact, or why it could not be tracked (then all its items fail so)."""

    video_sha256: str
    artifact_uri: str | None
    seconds: float
    reused: bool = False
    error_class: str | None = None
    error: str | None = None


def track_item(storage: Storage, settings: Settings, video_uri: str, video_sha256: str) -> TrackOutcome:
    """Track a catalog video once per content hash (the artifact is cached in storage)."""
    t = time.perf_counter()
    try:
        _, art, reused = track_cached(storage, settings, video_uri, video_sha256)
        return TrackOutcome(video_sha256, art, time.perf_counter() - t, reused)
    except ResyncError as e:
        return TrackOutcome(video_sha256, None, time.perf_counter() - t, error_class=str(e.error_class), error=e.reason)
    except Exception as e:  # noqa: BLE001 - an unknown failure is recorded (internal, or a full disk's storage_error), never raised
        log.error("tracking %s failed:\n%s", video_uri, traceback.format_exc())
        return TrackOutcome(video_sha256, None, time.perf_counter() - t, error_class=str(classify(e)),
                            error=f"{type(e).__name__}: {e}")


@dataclass
class ModelCache:
    """Models kept in memory across items (by version), with their audio feature extractors."""

    storage: Storage
    settings: Settings
    loaded: dict[str, tuple[ReSyncer, AudioFeatures]] = field(default_factory=dict)
    speech_timer: SpeechTimer | None = None
    warmed: set[tuple[str, int]] = field(default_factory=set)  # (model URI, generator batch)
    expert: SyncExpert | None = None

    def sync_expert(self) -> SyncExpert:
        """QA's audio-visual sync expert (settings.sync_expert_dir, else the bundled one), loaded once."""
        if self.expert is None:
            self.expert, _ = load_sync_expert(self.settings.sync_expert_dir)
        return self.expert

    def speech(self) -> SpeechTimer:
        """Speech timing and ASR models (QA's word error rate), loaded on first use."""
        if self.speech_timer is None:
            self.speech_timer = SpeechTimer(self.settings)
        return self.speech_timer

    def get(self, uri: str) -> tuple[ReSyncer, AudioFeatures]:
        if uri not in self.loaded:
            folder = model_store.local_model_dir(self.storage, self.settings, uri)
            model = model_store.load_model(self.settings, folder)
            self.loaded[uri] = (model, model_store.features_for(self.settings, model))
        return self.loaded[uri]


def warm_model(settings: Settings, models: ModelCache, model_uri: str,
               frame_sizes: Iterable[tuple[int, int]] = ()) -> float:
    """Load ``model_uri`` and run its generator once per batch the coming videos will use (one per
    distinct chunk length of ``frame_sizes``, (width, height); ``decode_chunk`` frames when none
    is given), so the first item does not wait for the load and the compile (about 7 s from
    Inductor's disk cache here, about 45 s for a batch this machine never compiled). Never raises:
    a model that does not load fails its items with their own error later."""
    t = time.perf_counter()
    batches = {chunk_frames(w, h, settings.decode_chunk, settings.decode_chunk_mb) for w, h in frame_sizes}
    todo = sorted(b for b in batches or {settings.decode_chunk} if (model_uri, b) not in models.warmed)
    if not todo:
        return 0.0
    try:
        model, _ = models.get(model_uri)
        warm_generator(settings, model, todo)
        models.warmed.update((model_uri, b) for b in todo)
    except Exception as e:  # noqa: BLE001 - warming is an optimisation; the items report the real error
        log.warning("warming model %s failed: %s", model_uri, e)
    return time.perf_counter() - t


def dub_item(storage: Storage, settings: Settings, job: ItemJob, models: ModelCache) -> dict:
    """Dub one item and publish its output; returns its manifest row (succeeded or failed).

    An output already published under this ``input_key`` (by an attempt that crashed before its
    shard committed) is complete, since outputs are published atomically: it is reused, not redone
    (``reused_row``).
    """
    it = job.item
    t0 = time.perf_counter()
    try:
        if storage.exists(job.output_uri):
            return reused_row(storage, job, t0)
        model, features = models.get(job.model_uri)
        if model.config.name != job.render_config:     # the row would claim a configuration that did not make it
            raise ResyncError(ErrorClass.MODEL_ERROR, f"model {model.version} is a {model.config.name!r} model, not one "
                              f"of the render config {job.render_config!r}", item=job.model_uri)
        track, _, _ = track_cached(storage, settings, it.video_uri, it.video_sha256)
        t = time.perf_counter()
        observer = OutputObserver(crop_matrices(track, QA_CROP, settings.crop_size), renderable(track)) \
            if settings.qa_metrics else None
        try:
            result = dub(storage, settings, it.video_uri, DubInputs(it.audio_uri), job.output_uri, model, features, track,
                         model_store.feature_cache(settings), observer=observer, observer_crop=QA_CROP)
        finally:
            if observer:
                observer.close()
        timings = {**result.timings, "load_s": t - t0}
        qa = dub_qa(result)
        if observer:
            t = time.perf_counter()
            qa = item_qa(storage, settings, it, result, track, observer, models)
            timings["qa_s"] = observer.seconds + time.perf_counter() - t
        return row(job, "succeeded", output_sha256=storage.sha256(job.output_uri), stage_seconds=timings, qa=qa)
    except ResyncError as e:
        return row(job, "failed", error_class=str(e.error_class), error=e.reason,
                   stage_seconds={"total_s": time.perf_counter() - t0})
    except Exception as e:  # noqa: BLE001 - see the module docstring
        log.error("dubbing %s/%s failed:\n%s", it.video_id, it.language, traceback.format_exc())
        return row(job, "failed", error_class=str(classify(e)), error=f"{type(e).__name__}: {e}",
                   stage_seconds={"total_s": time.perf_counter() - t0})


def reused_row(storage: Storage, job: ItemJob, t0: float) -> dict:
    """The row of an output reused under its ``input_key``. Its QA metrics (video seconds included,
    which the run's throughput counts) are those of a committed success of that key with the same
    output hash, when another run committed one meanwhile; otherwise the attempt that made it never
    recorded them: the output is probed for its frames and seconds, and ``qa_missing`` says the rest
    was never measured, so the QA report sends it to review instead of passing it unseen."""
    sha = storage.sha256(job.output_uri)
    done = DeltaTables(storage).read(DUBS_TABLE, columns=["output_sha256", "qa", "created_at"],
                                     filters=[("input_key", "=", job.item.input_key), ("status", "=", "succeeded")])
    same = sorted((r for r in done.to_pylist() if r["output_sha256"] == sha and r["qa"]), key=lambda r: r["created_at"])
    if same:
        qa = dict(same[-1]["qa"])
    else:
        probe = probe_video(storage, job.output_uri)
        qa = {"frames": float(probe.frame_count), "video_seconds": probe.duration_s, "qa_missing": 1.0}
    return row(job, "succeeded", output_sha256=sha, stage_seconds={"reused_output_s": time.perf_counter() - t0}, qa=qa)


def item_qa(storage: Storage, settings: Settings, item: PlannedItem, result: DubResult, track: TrackResult,
            observer: OutputObserver, models: ModelCache) -> dict[str, float]:
    """The QA metrics of a finished dub (tasks/qa.py), plus the tracking flags and, when the request
    has a script and an ASR model is configured, the word error rate of the translated audio."""
    audio = load_audio(storage, item.audio_uri)
    dubbed = Audio(fit_audio_length(audio.samples, result.video_seconds), SAMPLE_RATE)
    source = load_audio(storage, item.video_uri, required=False)
    flags = {f"{name}_share": float(f.mean()) for name, f in track.flags.items()}
    sync = sync_metrics(models.sync_expert(), observer, track.timestamps, dubbed, track.raw)
    qa = {**dub_qa(result), **item_metrics(settings, observer, track.timestamps, dubbed, sync, source,
                                          result.intended_marks, result.rendered_frames, result.frames,
                                          result.audio_overhang_s, flags)}
    if item.script and settings.asr_model_dir:
        transcript = models.speech().timing(audio, transcribe=True).transcript or ""
        qa["wer"] = word_error_rate(item.script, transcript)
    return qa


def dub_qa(result: DubResult) -> dict[str, float]:
    """The metrics every dub carries from the dubbing itself (the QA flow adds the rest)."""
    return {"frames": float(result.frames), "face_coverage": result.rendered_frames / max(result.frames, 1),
            "audio_overhang_s": result.audio_overhang_s, "video_seconds": result.video_seconds,
            "audio_seconds": result.audio_seconds}


def row(job: ItemJob, status: str, *, error_class: str | None = None, error: str | None = None,
        output_sha256: str | None = None, stage_seconds: dict[str, float] | None = None,
        qa: dict[str, float] | None = None) -> dict:
    """A manifest row (DESIGN section 4) for this job."""
    it = job.item
    return {"run_id": job.run_id, "shard_id": job.shard_id, "video_id": it.video_id, "language": it.language,
            "attempt": it.attempt, "input_key": it.input_key, "status": status, "error_class": error_class,
            "error": error, "output_uri": job.output_uri if status == "succeeded" else None,
            "output_sha256": output_sha256, "base_model_version": it.base_model_version,
            "speaker_model_version": it.speaker_model_version, "render_config": job.render_config,
            "stage_seconds": {k: float(v) for k, v in (stage_seconds or {}).items()},
            "qa": {k: float(v) for k, v in (qa or {}).items()}, "created_at": datetime.now(timezone.utc)}


def output_uri(storage: Storage, item: PlannedItem) -> str:
    """Where an item's dub is published (DESIGN section 4)."""
    return storage.uri("outputs", item.language, item.video_id, f"{item.input_key}.mp4")


__all__ = ["ItemJob", "TrackOutcome", "ModelCache", "track_item", "dub_item", "warm_model", "row", "output_uri"]
