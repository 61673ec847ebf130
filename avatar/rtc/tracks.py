"""Thin media tracks over a stage (the aiortc pattern: wait, pop, stamp pts).

Both tracks stamp pts from the stage's one ``MediaClock``: audio in 48 kHz samples,
video in 90 kHz ticks. Rendering happens in an executor so it never blocks the loop.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor

import av
import cv2
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from avatar.clock import AUDIO_RATE, AUDIO_TIME_BASE, VIDEO_CLOCK_RATE, VIDEO_TIME_BASE
from avatar.stage import Stage

AUDIO_FRAME_SAMPLES = AUDIO_RATE // 50  # 20 ms


def rgb_to_i420(rgb: np.ndarray) -> np.ndarray:
    """An RGB image as one yuv420p plane stack ``(h * 3 / 2, w)``."""
    return np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), dtype=np.uint8)


def rgb_to_video_frame(rgb: np.ndarray) -> av.VideoFrame:
    """Wrap an RGB image as a yuv420p ``VideoFrame`` (cv2's conversion is several times
    cheaper than letting the encoder reformat rgb24)."""
    return av.VideoFrame.from_ndarray(rgb_to_i420(rgb), format="yuv420p")


class StageAudioTrack(MediaStreamTrack):
    """The stage's voice: 20 ms mono s16 frames at 48 kHz, paced by the stage clock."""

    kind = "audio"

    def __init__(self, stage: Stage) -> None:
        super().__init__()
        self.stage = stage
        # Start on the frame grid at "now" so a late joiner is in step with the timeline.
        self._pts = (stage.clock.sample() // AUDIO_FRAME_SAMPLES) * AUDIO_FRAME_SAMPLES
        self.frames_sent = 0
        self.voiced_frames = 0
        self.last_pts: int | None = None  # of the latest frame sent (metrics: the A/V offset)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = self._pts
        await self.stage.clock.sleep_until(pts / AUDIO_RATE)
        samples = self.stage.read_audio(pts, AUDIO_FRAME_SAMPLES)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = pts
        frame.time_base = AUDIO_TIME_BASE
        self._pts = pts + AUDIO_FRAME_SAMPLES
        self.last_pts = pts
        self.frames_sent += 1
        if samples.any():
            self.voiced_frames += 1
        return frame


class StageVideoTrack(MediaStreamTrack):
    """The stage's picture at ``stage.fps``; late frames are skipped, never queued, so the
    picture cannot fall behind the voice."""

    kind = "video"

    def __init__(self, stage: Stage, executor: Executor | None = None) -> None:
        super().__init__()
        self.stage = stage
        self._executor = executor
        self._index = math.ceil(stage.clock.time() * stage.fps)
        self.frames_sent = 0
        self.frames_late = 0
        self.last_time: float | None = None  # stage time of the latest frame sent (metrics: the A/V offset)
        # The last picture and its yuv420p planes: an idle face often stays the same from one
        # frame to the next (the renderer then hands out the very same read-only array), and its
        # conversion need not be done again. Only this track's frames touch them, one at a time.
        self._last_rgb: np.ndarray | None = None
        self._last_i420: np.ndarray | None = None
        self.conversions_saved = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        fps = self.stage.fps
        t = self._index / fps
        await self.stage.clock.sleep_until(t)
        behind = self.stage.clock.time() - t
        if behind > 2.0 / fps:
            # Skip to the present rather than render a backlog.
            self.frames_late += 1
            self._index = math.floor(self.stage.clock.time() * fps)
            t = self._index / fps
        loop = asyncio.get_running_loop()
        frame = await loop.run_in_executor(self._executor, self._render, t)
        frame.pts = round(t * VIDEO_CLOCK_RATE)
        frame.time_base = VIDEO_TIME_BASE
        self._index += 1
        self.last_time = t
        self.frames_sent += 1
        return frame

    def _render(self, t: float) -> av.VideoFrame:
        rgb = self.stage.render(t)
        # A read-only array is one the renderer will not change (it caches frames): the same
        # object means the same pixels. A writeable one may be a buffer it draws into again.
        if rgb is self._last_rgb and self._last_i420 is not None and not rgb.flags.writeable:
            self.conversions_saved += 1
        else:
            self._last_rgb, self._last_i420 = rgb, rgb_to_i420(rgb)
        return av.VideoFrame.from_ndarray(self._last_i420, format="yuv420p")
