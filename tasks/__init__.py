"""One item's work, no orchestration: decoding, audio, tracking, dynamics, crops, speech timing.
Never imports Prefect or Ray."""
