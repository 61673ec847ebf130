"""Benchmark: illustrated-avatar frames, per frame, on one core.

    .venv/bin/python bench/bench_render.py [--seconds 60] [--size 512x512] [--no-write] [--previews]

Plays what a stage asks a renderer for at 25 fps: a conversation of bank-service lines in
English and Mandarin (espeak-ng phonemes -> lip-sync mouth track) separated by silent
pauses, over the idle animation (blinks, breathing, head sway and gaze shifts, with the
extra head motion of speech ramped in and out). Each illustrated avatar in ``assets/``
renders the sequence once, frame by frame in order and from cold caches, as a stage does.
Reports the time to prepare the avatar's art, then median, p95, p99 and worst frame times for
``render`` (the video track) and ``render_rgba`` (the broadcast overlay), with cache hit rates.
Writes its section of ``BENCHMARKS.md`` between ``<!-- bench:render -->`` and
``<!-- /bench:render -->`` unless ``--no-write``. ``--previews`` also (re)draws each illustrated
avatar's ``preview.png`` (256x256, a friendly rest face) for the avatar picker.
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

# One core: the frame budget (2 ms at 512x512) is counted per core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from avatar.face_state import FaceState  # noqa: E402
from bench._report import write_section  # noqa: E402

cv2.setNumThreads(1)

FPS = 25
COMMAND = ".venv/bin/python bench/bench_render.py"
# (language, line): what a bank's service avatar says; pauses go between them.
LINES = (
    ("en", "Good morning, and thank you for calling. How can I help you today?"),
    ("zh", "您好，欢迎致电。请问有什么可以帮您？"),
    ("en", "I can check your balance, report a lost card, or set up a transfer."),
    ("zh", "您的转账已经提交，预计两小时内到账。"),
    ("en", "For your security, please never share your card number or your passcode."),
)
PAUSE_S = 1.6
LEAD_IN_S = 2.0


def conversation_states(seconds: float) -> tuple[list[FaceState], float]:
    """FaceStates at ``FPS`` for ``seconds`` of conversation, and the fraction spent speaking."""
    from avatar.idle import IdleAnimator, speaking_weight
    from avatar.speech.lipsync import MouthTrack, track_from_phonemes
    from avatar.speech.tts.base import Voice
    from avatar.speech.tts.espeak import EspeakTTS

    tts = EspeakTTS()
    spoken: list[tuple[MouthTrack, float]] = []
    for lang, text in LINES:
        chunk = tts.synthesize_blocking(text, Voice("espeak", None, lang))
        spoken.append((track_from_phonemes(chunk.phonemes, chunk.duration, chunk.lang), chunk.duration))
    # Lay the lines out on the timeline, cycling until the clip is long enough.
    schedule: list[tuple[float, float, MouthTrack]] = []
    t = LEAD_IN_S
    i = 0
    while t < seconds:
        track, duration = spoken[i % len(spoken)]
        schedule.append((t, t + duration, track))
        t += duration + PAUSE_S
        i += 1
    idle = IdleAnimator(seed=7)
    states: list[FaceState] = []
    speaking_frames = 0
    for n in range(int(seconds * FPS)):
        now = n / FPS
        weight = 0.0
        state: FaceState | None = None
        for start, end, track in schedule:
            weight = max(weight, speaking_weight(now, start, end))
            if start <= now < end:
                state = idle.state_at(now, speaking=speaking_weight(now, start, end)).with_mouth(
                    track.mouth_at(now - start)
                )
                speaking_frames += 1
        states.append(state if state is not None else idle.state_at(now, speaking=weight))
    return states, speaking_frames / max(1, len(states))


def frame_times(render: Callable[[FaceState], object], states: list[FaceState]) -> np.ndarray:
    """Milliseconds per frame, rendering ``states`` in order."""
    out = np.empty(len(states))
    for i, state in enumerate(states):
        start = time.perf_counter()
        render(state)
        out[i] = (time.perf_counter() - start) * 1000.0
    return out


def stats(ms: np.ndarray) -> dict[str, float]:
    return {
        "median": float(np.median(ms)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
        "mean": float(ms.mean()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the conversation rendered")
    parser.add_argument("--size", default="512x512", help="WIDTHxHEIGHT (default 512x512)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    parser.add_argument("--previews", action="store_true", help="also redraw assets/avatars/*/preview.png")
    args = parser.parse_args()
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size {args.size!r}: expected WIDTHxHEIGHT")

    from avatar.render.catalog import AvatarCatalog, default_assets_dir
    from avatar.render.illustrated import IllustratedArt, IllustratedRenderer
    from avatar.render.rig import load_rig

    states, speaking = conversation_states(args.seconds)
    load_before = os.getloadavg()[0]
    catalog = AvatarCatalog(default_assets_dir(), ROOT / "data")
    avatars = [
        a for a in catalog.list() if a.kind == "illustrated" and a.path.parent.parent == default_assets_dir()
    ]
    rows: list[str] = []
    for info in avatars:
        rig = load_rig(info.path / "rig.yaml")
        if args.previews:
            still = IllustratedRenderer(rig, 256, 256).render(FaceState(smile=0.35))
            cv2.imwrite(str(info.path / "preview.png"), cv2.cvtColor(still, cv2.COLOR_RGB2BGR))
            print(f"wrote {info.path / 'preview.png'}")
        start = time.perf_counter()
        art = IllustratedArt.prepare(rig, width, height)
        prepare_ms = (time.perf_counter() - start) * 1000.0
        video = IllustratedRenderer(rig, width, height, art=art)
        video_ms = stats(frame_times(video.render, states))
        hits = {name: h / max(1, h + m) for name, (h, m) in video.cache_stats().items()}
        overlay = IllustratedRenderer(rig, width, height, art=art)
        overlay_ms = stats(frame_times(overlay.render_rgba, states))
        print(
            f"{info.name}: prepare {prepare_ms:.0f} ms; render median {video_ms['median']:.2f} ms, "
            f"p95 {video_ms['p95']:.2f}, p99 {video_ms['p99']:.2f}, max {video_ms['max']:.2f}; "
            f"render_rgba median {overlay_ms['median']:.2f}, p95 {overlay_ms['p95']:.2f}; "
            f"hit rates {', '.join(f'{k} {v:.0%}' for k, v in hits.items())}"
        )
        rows.append(
            f"| {info.name} | {prepare_ms:.0f} | {video_ms['median']:.2f} | {video_ms['p95']:.2f} | "
            f"{video_ms['p99']:.2f} | {video_ms['max']:.1f} | {overlay_ms['median']:.2f} | {overlay_ms['p95']:.2f} | "
            f"{hits['pose']:.0%} / {hits['sprite']:.0%} / {hits['placement']:.0%} |"
        )
    load_after = os.getloadavg()[0]
    section = "\n".join(
        [
            "## Illustrated avatar rendering",
            "",
            f"`{COMMAND}` (options: `--seconds`, `--size`, `--no-write`)",
            "",
            f"{len(states)} frames ({args.seconds:.0f} s at {FPS} fps, {width}x{height}) of a conversation: "
            f"English and Mandarin lines (espeak-ng phonemes, lip-sync track; speech in {speaking:.0%} of "
            "the frames) between pauses, over the idle animation (blinks, breath, head sway, gaze). "
            "Frames rendered once, in order, from cold caches, on one core (`cv2.setNumThreads(1)`). "
            "Times in ms per frame.",
            "",
            "| avatar | prepare art | render median | p95 | p99 | max | render_rgba median | p95 | hit rate pose / sprite / placement |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
            f"{load_before:.1f} before / {load_after:.1f} after (shared machine: other jobs inflate the tails); "
            f"Python {platform.python_version()}, OpenCV {cv2.__version__}, NumPy {np.__version__}.",
        ]
    )
    if not args.no_write:
        write_section("render", section)
        print(f"wrote the render section of {ROOT / 'BENCHMARKS.md'}")
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
