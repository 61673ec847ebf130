"""WebRTC plumbing: thin tracks that read a stage, and peer connection helpers."""
