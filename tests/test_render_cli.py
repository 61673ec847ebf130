"""``avatar render``: a real clip through the real TTS, lip-sync and renderer, checked with PyAV."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "avatar", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.slow
def test_render_writes_h264_aac_mp4_with_speech_and_moving_mouth(tmp_path: Path) -> None:
    out = tmp_path / "hello.mp4"
    result = run_cli("render", "--text", "Hello, welcome to our bank.", "--out", str(out), "--avatar", "leo",
                     "--size", "256x256", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert (video.width, video.height) == (256, 256)
        assert int(video.average_rate) == 25
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(out)) as container:
        samples = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)])
    assert len(frames) > 25  # over a second of speech
    assert float(np.sqrt(np.mean(samples**2))) > 0.01  # audible (float samples in -1..1)
    # The picture changes while speaking (mouth, blinks, head): frames are not all the same.
    diffs = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in itertools.pairwise(frames)]
    assert max(diffs) > 0.5


def test_render_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    cases = [
        (["--text", "hi", "--out", str(tmp_path / "x.avi")], "must be an .mp4"),
        (["--text", "  ", "--out", str(tmp_path / "x.mp4")], "must not be empty"),
        (["--text", "hi", "--out", str(tmp_path / "x.mp4"), "--avatar", "nobody"], "nobody"),
        (["--text", "hi", "--out", str(tmp_path / "x.mp4"), "--size", "big"], "WIDTHxHEIGHT"),
        (["--text", "hi", "--out", str(tmp_path / "x.mp4"), "--size", "513x512"], "even"),
        (["--text", "hi", "--out", str(tmp_path / "x.mp4"), "--tts", "robot"], "piper, espeak or edge"),
    ]
    for args, message in cases:
        result = run_cli("render", *args, "--data-dir", str(tmp_path / "data"))
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
        assert not (tmp_path / "x.mp4").exists()
