"""Mirror mode: a person's webcam drives the avatar's head, eyes and mouth.

Frames arrive on the stage clock from the peer's video track; tracking runs in a worker
thread, and frames that arrive while one is being tracked are dropped (the newest frame
wins), so a slow machine lags less instead of queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Executor
from typing import Any

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from avatar.face_state import FaceState
from avatar.stage import Stage

#: Frames are tracked at this width at most: landmarks need no more, and it keeps tracking cheap.
TRACK_WIDTH = 480


class PuppetFace:
    """Adapts a ``FacePuppet`` to the stage's face-source contract."""

    def __init__(self, puppet: Any) -> None:
        self.puppet = puppet

    def state_at(self, t: float, speaking: float = 0.0) -> FaceState:
        state: FaceState = self.puppet.state_at(t)
        return state


def downscale(rgb: np.ndarray, width: int = TRACK_WIDTH) -> np.ndarray:
    h, w = rgb.shape[:2]
    if w <= width:
        return rgb
    return cv2.resize(rgb, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)


async def drive_from_track(track: MediaStreamTrack, stage: Stage, puppet: Any, executor: Executor | None) -> None:
    """Feed ``track``'s frames to ``puppet`` until the track ends; the stage shows the puppet."""
    loop = asyncio.get_running_loop()
    stage.face_override = PuppetFace(puppet)
    busy: asyncio.Future[None] | None = None
    try:
        while True:
            frame = await track.recv()
            if not isinstance(frame, av.VideoFrame):
                continue
            if busy is not None and not busy.done():
                continue  # still tracking the previous frame: drop this one
            t = stage.clock.time()
            rgb = downscale(frame.to_ndarray(format="rgb24"))
            busy = loop.run_in_executor(executor, puppet.push, rgb, t)
    except (MediaStreamError, asyncio.CancelledError):
        pass
    finally:
        if busy is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await busy
        stage.face_override = None
