"""Offline clips: the avatar saying a text, written to an MP4 (H.264 video, AAC audio).

It runs the same path as a live stage (TTS sentence by sentence -> lip-sync -> the stage
timeline -> the renderer), on a clock that is simply the frame counter, so a clip shows
exactly what a live customer would see and hear.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avatar.clock import AUDIO_RATE, FakeClock
from avatar.config import Settings
from avatar.idle import IdleAnimator
from avatar.render.base import AvatarRenderer
from avatar.speech.lang import detect_lang
from avatar.speech.lipsync import track_from_phonemes
from avatar.speech.tts.base import Voice
from avatar.speech.tts.registry import TTSRegistry
from avatar.speech.tts.stream import speak_stream
from avatar.stage import Stage

Progress = Callable[[int, int], None]

#: Quiet lead-in and tail around the speech, so a clip does not start or end mid-word.
LEAD_IN = 0.3
TAIL = 0.6


@dataclass
class ClipInfo:
    path: Path
    duration: float
    frames: int
    sentences: int


async def synthesize_onto(
    stage: Stage, tts: TTSRegistry, text: str, voice: Voice, voice_for: Callable[[str], Voice] | None = None
) -> int:
    """Place every sentence of ``text`` on ``stage``'s timeline; returns how many there were.
    With ``voice_for`` (language -> voice), each language's part is spoken by its own voice, as
    in a live call (``speak_stream``)."""
    count = 0
    async with contextlib.aclosing(speak_stream(tts, text, voice, voice_for=voice_for)) as chunks:
        async for chunk in chunks:
            stage.schedule(chunk, track_from_phonemes(chunk.phonemes, chunk.duration, lang=chunk.lang))
            count += 1
    return count


def render_clip(
    text: str,
    out: Path,
    renderer: AvatarRenderer,
    tts: TTSRegistry,
    voice: Voice,
    fps: int,
    progress: Progress | None = None,
    seed: int = 7,
    voice_for: Callable[[str], Voice] | None = None,
) -> ClipInfo:
    """Render ``text`` spoken by ``renderer``'s avatar into ``out`` (MP4). ``voice_for``: see
    ``synthesize_onto`` (a line mixing Chinese and English)."""
    fake = FakeClock(start=0.0, auto=True)
    clock = fake.media_clock()
    fake.t = -LEAD_IN  # speech starts LEAD_IN seconds into the clip (stage time 0)
    stage = Stage(renderer, clock, IdleAnimator(seed), fps=fps)
    fake.t = 0.0
    sentences = asyncio.run(synthesize_onto(stage, tts, text, voice, voice_for))
    duration = stage.speaking_until() + TAIL
    frames = int(np.ceil(duration * fps))
    samples_per_frame = Fraction(AUDIO_RATE, fps)

    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), mode="w", format="mp4") as container:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.width = renderer.width
        vstream.height = renderer.height
        vstream.pix_fmt = "yuv420p"
        vstream.options = {"crf": "20", "preset": "veryfast"}
        astream = container.add_stream("aac", rate=AUDIO_RATE)
        astream.layout = "mono"
        audio_pts = 0
        for i in range(frames):
            t = i / fps
            rgb = stage.render(t)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in vstream.encode(frame):
                container.mux(packet)
            end = int((i + 1) * samples_per_frame)
            samples = stage.read_audio(audio_pts, end - audio_pts)
            aframe = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            aframe.sample_rate = AUDIO_RATE
            aframe.pts = audio_pts
            aframe.time_base = Fraction(1, AUDIO_RATE)
            for packet in astream.encode(aframe):
                container.mux(packet)
            audio_pts = end
            if progress is not None:
                progress(i + 1, frames)
        for packet in vstream.encode(None):
            container.mux(packet)
        for packet in astream.encode(None):
            container.mux(packet)
    return ClipInfo(out, duration, frames, sentences)


def resolve_voice(settings: Settings, tts: TTSRegistry, avatar: str, text: str, engine: str | None, voice: str | None) -> Voice:
    lang = detect_lang(text, default="zh" if settings.default_lang == "zh" else "en")
    if engine is None and voice is None:
        return tts.voice_for(avatar, lang)
    base = tts.voice_for(avatar, lang)
    return Voice(engine=engine or base.engine, voice=voice if voice is not None else (None if engine else base.voice), lang=lang)
