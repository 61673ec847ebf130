"""Benchmark: photo-avatar frames and webcam face tracking, per frame, on one core.

    .venv/bin/python bench/bench_face.py [--seconds 20] [--no-write]

Renders the shipped photo avatar (``assets/avatars/astronaut``) at 512x512 for a spoken
paragraph: espeak-ng phonemes -> lip-sync mouth track -> idle head motion and blinks, the
states a stage would ask for at 25 fps. Where the illustrated avatar (``anna``) is present it
is rendered from the same states, for comparison. Then times ``FaceTracker.landmarks`` and
the whole ``FacePuppet.push`` on 640x480 webcam-like frames (the photo avatar drawn at that
size, so a face is always there). Writes its section of ``BENCHMARKS.md`` between
``<!-- bench:face -->`` and ``<!-- /bench:face -->`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# One core, as the project's deployment target is counted per core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from avatar.face_state import FaceState  # noqa: E402
from bench._report import write_section  # noqa: E402

cv2.setNumThreads(1)

TEXT = (
    "Good morning, and thank you for calling. I can help you check your balance, "
    "report a lost card, or set up a transfer. What would you like to do today?"
)
FPS = 25


def speech_states(seconds: float) -> list[FaceState]:
    """FaceStates of a stage speaking ``TEXT`` (repeated to ``seconds``) at ``FPS``."""
    from avatar.idle import IdleAnimator
    from avatar.speech.lipsync import track_from_phonemes
    from avatar.speech.tts.base import Voice
    from avatar.speech.tts.espeak import EspeakTTS

    chunk = EspeakTTS().synthesize_blocking(TEXT, Voice("espeak", None, "en"))
    track = track_from_phonemes(chunk.phonemes, chunk.duration, chunk.lang)
    idle = IdleAnimator(seed=3)
    states = []
    for i in range(int(seconds * FPS)):
        t = i / FPS
        pose = idle.state_at(t, speaking=True)
        states.append(pose.with_mouth(track.mouth_at(t % chunk.duration)))
    return states


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def summary(ms: list[float]) -> tuple[float, float, float]:
    arr = np.asarray(ms)
    return float(np.median(arr)), float(np.percentile(arr, 95)), float(arr.mean())


def bench_render(renderer: object, states: list[FaceState]) -> tuple[list[float], list[float], float, float]:
    """Per-frame wall ms for a first pass over ``states`` (cold caches) and a second (warm),
    and each pass's mean CPU ms per frame (this thread's own time: on a shared machine it is
    what the frame costs, while wall time also counts waiting for a core)."""
    render = renderer.render  # type: ignore[attr-defined]
    passes: list[list[float]] = []
    cpu: list[float] = []
    for _ in range(2):
        wall = []
        cpu_start = time.thread_time()
        for s in states:
            start = time.perf_counter()
            render(s)
            wall.append((time.perf_counter() - start) * 1000.0)
        cpu.append((time.thread_time() - cpu_start) * 1000.0 / len(states))
        passes.append(wall)
    return passes[0], passes[1], cpu[0], cpu[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the spoken clip rendered")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    from avatar.face.landmarks import FaceTracker
    from avatar.face.puppet import FacePuppet
    from avatar.render.photo import load_photo_avatar

    states = speech_states(args.seconds)
    rows: list[tuple[str, tuple[float, float, float], tuple[float, float, float], tuple[float, float]]] = []

    start = time.perf_counter()
    photo = load_photo_avatar(ROOT / "assets" / "avatars" / "astronaut", 512, 512)
    photo_load = (time.perf_counter() - start) * 1000.0
    cold, warm, cpu_cold, cpu_warm = bench_render(photo, states)
    rows.append(("photo `astronaut`", summary(cold), summary(warm), (cpu_cold, cpu_warm)))
    rgba_ms = timed(lambda: photo.render_rgba(states[len(states) // 2]), 50)

    rig_file = ROOT / "assets" / "avatars" / "anna" / "rig.yaml"
    illustrated_note = "the illustrated renderer was not found"
    if rig_file.is_file():
        try:
            from avatar.render.illustrated import IllustratedRenderer
            from avatar.render.rig import load_rig

            rig = load_rig(rig_file)
            illustrated = IllustratedRenderer(rig, 512, 512)
            cold_i, warm_i, cpu_cold_i, cpu_warm_i = bench_render(illustrated, states)
            rows.append(("illustrated `anna`", summary(cold_i), summary(warm_i), (cpu_cold_i, cpu_warm_i)))
            illustrated_note = ""
        except Exception as exc:  # the comparison is optional; report why it is missing
            illustrated_note = f"illustrated renderer unavailable: {exc}"

    tracker = FaceTracker()
    cam = load_photo_avatar(ROOT / "assets" / "avatars" / "astronaut", 640, 480)
    frames = [cam.render(s).copy() for s in states[:: max(1, len(states) // 100)]]
    tracker.landmarks(frames[0])  # load the model outside the timing
    track_ms = []
    for f in frames:
        start = time.perf_counter()
        tracker.landmarks(f)
        track_ms.append((time.perf_counter() - start) * 1000.0)
    puppet = FacePuppet(tracker)
    push_ms = []
    for i, f in enumerate(frames):
        start = time.perf_counter()
        puppet.push(f, i / FPS)
        push_ms.append((time.perf_counter() - start) * 1000.0)

    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0]
    lines = [
        "## Photo avatars and face tracking",
        "",
        f"Reproduce: `.venv/bin/python bench/bench_face.py --seconds {args.seconds:g}` "
        f"({len(states)} frames of a spoken paragraph at {FPS} fps, 512x512, one thread; "
        f"{cpu} with {os.cpu_count()} cores, load average {load:.1f} at the end of the run, "
        f"Python {platform.python_version()}, OpenCV {cv2.__version__}).",
        "",
        "Per-frame render cost (ms, wall clock; CPU mean: the rendering thread's own CPU time, "
        "which waiting for a busy core does not inflate). First pass: caches cold, as when a stage "
        "starts talking; second pass: the same clip again.",
        "",
        "| renderer | first pass median | p95 | mean | CPU mean | second pass median | p95 | mean | CPU mean |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c, w, u in rows:
        lines.append(
            f"| {name} | {c[0]:.2f} | {c[1]:.2f} | {c[2]:.2f} | {u[0]:.2f} | {w[0]:.2f} | {w[1]:.2f} | {w[2]:.2f} | {u[1]:.2f} |"
        )
    if illustrated_note:
        lines += ["", f"({illustrated_note})"]
    r = summary(rgba_ms)
    t = summary(track_ms)
    p = summary(push_ms)
    lines += [
        "",
        f"Photo avatar: load {photo_load:.0f} ms; `render_rgba` median {r[0]:.2f} ms.",
        "",
        "Face tracking per 640x480 webcam frame (ms, mediapipe face mesh with irises, static-image mode):",
        "",
        "| step | median | p95 | mean |",
        "| --- | --- | --- | --- |",
        f"| `FaceTracker.landmarks` | {t[0]:.2f} | {t[1]:.2f} | {t[2]:.2f} |",
        f"| `FacePuppet.push` (tracking + cues + smoothing) | {p[0]:.2f} | {p[1]:.2f} | {p[2]:.2f} |",
        "",
        f"Faces found in {puppet.faces} of {puppet.frames} frames.",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section("face", section)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
