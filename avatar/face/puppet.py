"""Face-driven mode: webcam frames in, ``FaceState``s on the stage clock out.

``FacePuppet`` is per session (it holds one person's filters and calibration); the
``FaceTracker`` it uses is the shared, stateless engine. Frames arrive with their capture time
on the stage clock; each is tracked, measured (``cues``), mapped to a ``FaceState`` and
smoothed per channel with a One Euro filter (steady when the face is still, quick when it
moves). ``state_at(t)`` is what the stage asks for when it draws the frame shown at ``t``.

A lost face (no face in the frame, or no frames for ``lost_after`` seconds) eases back to the
neutral face over ``ease_out`` seconds; when the face comes back the avatar blends from where
it was to the tracked face over ``reacquire`` seconds, so neither event makes the avatar jump.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import fields, replace

import numpy as np

from avatar.face.cues import DEFAULT_CALIBRATION, Calibration, FaceCues, measure_cues, to_face_state
from avatar.face.landmarks import FaceTracker
from avatar.face_state import FaceState, MouthShape

NEUTRAL = FaceState()


class OneEuroFilter:
    """Casiez et al.'s One Euro filter for one scalar: a low-pass whose cutoff rises with speed.

    ``min_cutoff`` (Hz) sets the smoothing at rest, ``beta`` how fast the cutoff grows with the
    signal's speed, ``d_cutoff`` (Hz) the smoothing of the speed estimate itself.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self._x: float | None = None
        self._dx = 0.0
        self._t = 0.0

    @staticmethod
    def _alpha(cutoff: float, dt: float) -> float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: float, t: float) -> float:
        if self._x is None:
            self._x, self._dx, self._t = x, 0.0, t
            return x
        dt = t - self._t
        if dt <= 0.0:
            return self._x
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1.0 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * abs(self._dx)
        a = self._alpha(cutoff, dt)
        self._x = a * x + (1.0 - a) * self._x
        self._t = t
        return self._x

    def reset(self) -> None:
        self._x = None
        self._dx = 0.0


# Per-channel filter settings (min_cutoff Hz, beta): lids and lips must follow a blink or a
# syllable (~100 ms); head angles and brows may be steadier, so webcam jitter does not show.
_CHANNELS: dict[str, tuple[float, float]] = {
    "open": (4.0, 2.0),
    "width": (2.0, 1.0),
    "round": (2.0, 1.0),
    "teeth": (3.0, 1.0),
    "eye_close_left": (6.0, 2.0),
    "eye_close_right": (6.0, 2.0),
    "brow": (1.5, 0.5),
    "smile": (1.5, 0.5),
    "head_yaw": (1.0, 0.05),
    "head_pitch": (1.0, 0.05),
    "head_roll": (1.0, 0.05),
    "gaze_x": (2.0, 0.5),
    "gaze_y": (2.0, 0.5),
}


def _flatten(state: FaceState) -> dict[str, float]:
    m = state.mouth
    return {
        "open": m.open,
        "width": m.width,
        "round": m.round,
        "teeth": m.teeth,
        "eye_close_left": state.eye_close_left,
        "eye_close_right": state.eye_close_right,
        "brow": state.brow,
        "smile": state.smile,
        "head_yaw": state.head_yaw,
        "head_pitch": state.head_pitch,
        "head_roll": state.head_roll,
        "gaze_x": state.gaze_x,
        "gaze_y": state.gaze_y,
    }


def _unflatten(values: dict[str, float], base: FaceState) -> FaceState:
    mouth = MouthShape(open=values["open"], width=values["width"], round=values["round"], teeth=values["teeth"])
    return replace(
        base,
        mouth=mouth,
        eye_close_left=values["eye_close_left"],
        eye_close_right=values["eye_close_right"],
        brow=values["brow"],
        smile=values["smile"],
        head_yaw=values["head_yaw"],
        head_pitch=values["head_pitch"],
        head_roll=values["head_roll"],
        gaze_x=values["gaze_x"],
        gaze_y=values["gaze_y"],
    )


def lerp_face(a: FaceState, b: FaceState, k: float) -> FaceState:
    """The state ``k`` of the way from ``a`` to ``b`` (every field linearly)."""
    k = min(1.0, max(0.0, k))
    values = {}
    for f in fields(FaceState):
        if f.name == "mouth":
            continue
        values[f.name] = getattr(a, f.name) * (1.0 - k) + getattr(b, f.name) * k
    return FaceState(mouth=a.mouth.lerp(b.mouth, k), **values)


def mirrored(state: FaceState) -> FaceState:
    """``state`` as seen in a mirror: left and right swapped (eyes, turn, tilt, gaze)."""
    return replace(
        state,
        eye_close_left=state.eye_close_right,
        eye_close_right=state.eye_close_left,
        head_yaw=-state.head_yaw,
        head_roll=-state.head_roll,
        gaze_x=-state.gaze_x,
    )


def _ease(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3.0 - 2.0 * x)


class _Calibrator:
    """Learns a person's neutral face from the last seconds of cues: eyes are open most of the
    time, the mouth is mostly closed, so percentiles of recent measurements are their rest."""

    def __init__(self, window: int = 300, min_samples: int = 20) -> None:
        self._cues: deque[FaceCues] = deque(maxlen=window)
        self._min = min_samples
        self.current = DEFAULT_CALIBRATION

    def add(self, cues: FaceCues) -> Calibration:
        self._cues.append(cues)
        n = len(self._cues)
        if n >= self._min and (n < 60 or n % 10 == 0):
            lids = np.array([c.lid_left for c in self._cues] + [c.lid_right for c in self._cues])
            closed_mouth = [c for c in self._cues if c.mouth_gap < 0.05] or list(self._cues)
            lid_open = float(np.percentile(lids, 80))
            self.current = Calibration(
                mouth_width=float(np.median([c.mouth_width for c in closed_mouth])),
                smile_lift=float(np.median([c.smile_lift for c in closed_mouth])),
                lid_open=max(lid_open, DEFAULT_CALIBRATION.lid_shut + 0.08),
                lid_shut=DEFAULT_CALIBRATION.lid_shut,
                brow=float(np.median([(c.brow_left + c.brow_right) / 2.0 for c in self._cues])),
            )
        return self.current


class FacePuppet:
    """One person's face driving an avatar (see the module docstring).

    ``mirror=False``: the avatar copies the person (its left eye closes when theirs does, it
    turns to its own left when they turn to theirs), as when an operator drives a customer's
    avatar. ``mirror=True``: the avatar moves as the person's mirror image, as on a page that
    shows the person's selfie view beside it.

    Thread-safety: ``push`` and ``state_at`` may be called from different threads at once (a
    lock guards the filters and history; the tracker runs outside it). ``push`` blocks for the
    tracking (a few ms): call it off the event loop. Frames whose time is not after the last
    accepted frame's are dropped, so two overlapping ``push`` calls cannot reorder the stream.
    """

    def __init__(
        self,
        tracker: FaceTracker,
        *,
        lost_after: float = 0.25,
        ease_out: float = 0.5,
        reacquire: float = 0.2,
        calibrate: bool = True,
        mirror: bool = False,
    ) -> None:
        self.tracker = tracker
        self.mirror = mirror
        self.lost_after = lost_after
        self.ease_out = ease_out
        self.reacquire = reacquire
        self._calibrator = _Calibrator() if calibrate else None
        self._filters = {name: OneEuroFilter(mc, beta) for name, (mc, beta) in _CHANNELS.items()}
        self._lock = threading.Lock()
        self._history: deque[tuple[float, FaceState]] = deque(maxlen=32)
        self._last_push = -math.inf
        self._last_face = -math.inf
        self._lost_since: float | None = None
        self._blend_from: FaceState | None = None
        self._blend_start = -math.inf
        self.frames = 0
        self.faces = 0

    @property
    def calibration(self) -> Calibration:
        return self._calibrator.current if self._calibrator else DEFAULT_CALIBRATION

    def push(self, frame_rgb: np.ndarray, t: float) -> None:
        """Track one webcam frame (RGB uint8, any size) captured at stage time ``t`` (s).

        Blocks for the tracking (about 5 ms for 640x480 on one core). A caller receiving
        frames faster than that should track the newest and drop the ones that queued up:
        the smoothing copes with an uneven frame rate."""
        faces = self.tracker.landmarks(frame_rgb)
        cues = measure_cues(faces[0]) if faces else None
        self.push_cues(cues, t)

    def push_cues(self, cues: FaceCues | None, t: float) -> None:
        """Feed already-measured cues (None: no face in that frame) at stage time ``t``."""
        with self._lock:
            if t <= self._last_push:
                return
            self._last_push = t
            self.frames += 1
            if cues is None:
                if self._lost_since is None and self._history:
                    self._lost_since = t
                return
            self.faces += 1
            calib = self._calibrator.add(cues) if self._calibrator else DEFAULT_CALIBRATION
            raw = to_face_state(cues, calib)
            if self.mirror:
                raw = mirrored(raw)
            returning = self._history and (self._lost_since is not None or t - self._last_face > self.lost_after)
            if returning:
                # Start the filters afresh on the returning face, and blend the avatar from
                # wherever the ease-out had taken it.
                self._blend_from = self._displayed(t)
                self._blend_start = t
                for f in self._filters.values():
                    f.reset()
            flat = _flatten(raw)
            smoothed = {name: self._filters[name](value, t) for name, value in flat.items()}
            self._history.append((t, _unflatten(smoothed, NEUTRAL)))
            self._last_face = t
            self._lost_since = None

    def _tracked(self, t: float) -> FaceState:
        """The newest smoothed state at or before ``t`` (the oldest one if ``t`` precedes all)."""
        chosen = self._history[0][1]
        for ts, state in self._history:
            if ts <= t:
                chosen = state
            else:
                break
        return chosen

    def _displayed(self, t: float) -> FaceState:
        if not self._history:
            return NEUTRAL
        state = self._tracked(t)
        lost_at = self._lost_since
        if lost_at is None and t - self._last_face > self.lost_after:
            lost_at = self._last_face + self.lost_after
        if lost_at is not None and t >= lost_at:
            state = lerp_face(state, NEUTRAL, _ease((t - lost_at) / self.ease_out))
        elif self._blend_from is not None and t - self._blend_start < self.reacquire:
            state = lerp_face(self._blend_from, state, _ease((t - self._blend_start) / self.reacquire))
        return state

    def state_at(self, t: float) -> FaceState:
        """The face to draw at stage time ``t``: neutral before any face was seen."""
        with self._lock:
            return self._displayed(t)
