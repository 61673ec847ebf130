"""The stage timeline, the one media clock and the tracks that read it (fake clock, no wall time)."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from avatar.clock import AUDIO_RATE, VIDEO_CLOCK_RATE, FakeClock
from avatar.face_state import FaceState
from avatar.rtc.tracks import AUDIO_FRAME_SAMPLES, StageAudioTrack, StageVideoTrack
from avatar.speaker import Speaker
from avatar.stage import SCHEDULE_LEAD, Stage, to_stage_rate
from tests.stage_fakes import InlineExecutor, PlainRenderer, RampMouth, StillFace, ToneSource, tone_chunk


def make_stage(fps: int = 25, auto: bool = True) -> tuple[FakeClock, Stage]:
    fake = FakeClock(auto=auto)
    stage = Stage(PlainRenderer(), fake.media_clock(), StillFace(), fps=fps)
    return fake, stage


def test_resampling_keeps_duration() -> None:
    for rate in (16_000, 22_050, 24_000, 48_000):
        audio = np.zeros(rate, np.int16)  # one second
        assert len(to_stage_rate(audio, rate)) == AUDIO_RATE


def test_schedule_places_segments_back_to_back() -> None:
    _fake, stage = make_stage()
    a = stage.schedule(tone_chunk(seconds=0.5), RampMouth(0.5))
    b = stage.schedule(tone_chunk(seconds=0.25), RampMouth(0.25))
    assert a.start == int(SCHEDULE_LEAD * AUDIO_RATE)
    assert b.start == a.end  # contiguous: no gap, no overlap
    assert len(a.audio) == AUDIO_RATE // 2
    assert stage.speaking_until() == pytest.approx(b.end_time)


async def test_new_speech_starts_at_the_first_sample_no_track_has_read() -> None:
    fake, stage = make_stage(auto=False)
    track = StageAudioTrack(stage)
    frame = await track.recv()  # the frame playing now [0, 20 ms) is handed over at once
    assert frame.pts == 0
    fake.advance(0.003)  # 3 ms into that frame: the next unread sample is the 20 ms boundary
    seg = stage.schedule(tone_chunk(seconds=0.5), RampMouth(0.5))
    assert seg.start == AUDIO_FRAME_SAMPLES  # not SCHEDULE_LEAD after "now", not a frame later
    track.stop()
    # Late in a frame (or with no track reading at all), the start keeps SCHEDULE_LEAD from now.
    fake, stage = make_stage(auto=False)
    track = StageAudioTrack(stage)
    await track.recv()
    fake.advance(0.0185)  # 1.5 ms before the next boundary
    seg = stage.schedule(tone_chunk(seconds=0.5), RampMouth(0.5))
    assert seg.start == stage.clock.sample() + int(SCHEDULE_LEAD * AUDIO_RATE) > AUDIO_FRAME_SAMPLES
    track.stop()


def test_read_audio_returns_timeline_and_silence() -> None:
    _, stage = make_stage()
    seg = stage.schedule(tone_chunk(seconds=0.5), RampMouth(0.5))
    before = stage.read_audio(0, seg.start)
    assert not before.any()
    during = stage.read_audio(seg.start, 960)
    assert np.array_equal(during, seg.audio[:960])
    after = stage.read_audio(seg.end, 960)
    assert not after.any()


def test_mouth_follows_audio_sample_position() -> None:
    _, stage = make_stage()
    seg = stage.schedule(tone_chunk(seconds=1.0), RampMouth(1.0))
    # Half way through the segment's audio, the ramp mouth is half open.
    t = seg.start_time + 0.5
    assert stage.face_at(t).mouth.open == pytest.approx(0.5, abs=1e-3)
    assert stage.face_at(seg.start_time - 0.01).mouth.open == 0.0
    assert stage.face_at(seg.end_time + 0.2).mouth.open == 0.0


def test_flush_cuts_unsent_audio_and_releases_mouth() -> None:
    fake, stage = make_stage()
    seg = stage.schedule(tone_chunk("one two three four", seconds=1.0), RampMouth(1.0))
    queued = stage.schedule(tone_chunk(seconds=1.0), RampMouth(1.0))
    # Play 0.5 s of the first segment, then interrupt.
    fake.advance(seg.start_time + 0.5)
    stage.read_audio(seg.start, int(0.5 * AUDIO_RATE))
    cut_end = stage.flush()
    assert not stage.read_audio(cut_end, AUDIO_RATE).any()  # silence after the cut
    assert seg.cut_at == cut_end
    assert queued.start >= cut_end and stage.speaking_until() == pytest.approx(cut_end / AUDIO_RATE)
    # Words fully played before the cut were heard; the rest were not.
    assert [w.text for w in seg.words_heard()] == ["one", "two"]
    # The mouth eases to rest within the release time.
    assert stage.face_at(cut_end / AUDIO_RATE + 0.2).mouth.open == 0.0
    assert 0.0 < stage.face_at(cut_end / AUDIO_RATE + 0.01).mouth.open <= 0.51


async def test_tracks_share_one_clock_with_monotonic_pts() -> None:
    fake, stage = make_stage(fps=25, auto=False)
    audio = StageAudioTrack(stage)
    video = StageVideoTrack(stage, InlineExecutor())
    audio_pts: list[int] = []
    video_pts: list[tuple[int, float]] = []

    async def pull_audio() -> None:
        for _ in range(50):  # one second of audio
            frame = await audio.recv()
            assert frame.sample_rate == AUDIO_RATE and frame.samples == AUDIO_FRAME_SAMPLES
            audio_pts.append(frame.pts)

    async def pull_video() -> None:
        for _ in range(25):
            frame = await video.recv()
            video_pts.append((frame.pts, stage.clock.time()))

    tasks = asyncio.gather(pull_audio(), pull_video())
    await fake.run_for(1.1)
    await asyncio.wait_for(tasks, 5)
    assert all(b - a == AUDIO_FRAME_SAMPLES for a, b in itertools.pairwise(audio_pts))
    pts = [p for p, _ in video_pts]
    assert all(b - a == VIDEO_CLOCK_RATE // 25 for a, b in itertools.pairwise(pts))
    # Both tracks count from the same origin: each frame leaves when the clock reaches its pts.
    assert audio_pts[0] == 0 and pts[0] == 0
    for p, sent_at in video_pts:
        assert sent_at == pytest.approx(p / VIDEO_CLOCK_RATE, abs=0.006)
    audio.stop()
    video.stop()


class CachingRenderer(PlainRenderer):
    """Hands out the same array while the mouth does not move, read-only (as the illustrated
    renderer does with its cached frames), or one buffer drawn into again (``writeable``)."""

    def __init__(self, writeable: bool = False) -> None:
        super().__init__()
        self.writeable = writeable
        self._last: tuple[float, np.ndarray] | None = None

    def render(self, state: FaceState) -> np.ndarray:
        if self.writeable and self._last is not None:
            frame = self._last[1]
            frame[:, :, 0] = round(state.mouth.open * 255)  # every picture drawn into one buffer
            return frame
        if self._last is not None and self._last[0] == state.mouth.open:
            return self._last[1]
        frame = super().render(state)
        frame.flags.writeable = self.writeable
        self._last = (state.mouth.open, frame)
        return frame


@pytest.mark.parametrize("writeable", [False, True])
async def test_an_unchanged_picture_is_not_converted_again(writeable: bool) -> None:
    fake = FakeClock(auto=True)
    stage = Stage(CachingRenderer(writeable), fake.media_clock(), StillFace(), fps=25)
    seg = stage.schedule(tone_chunk(seconds=0.2), RampMouth(0.2))
    video = StageVideoTrack(stage, InlineExecutor())
    frames = [await video.recv() for _ in range(25)]  # rest, then the ramp, then rest again
    opens = [int(f.to_ndarray(format="rgb24")[0, 0, 0]) for f in frames]
    expected = [round(stage.face_at(f.pts / VIDEO_CLOCK_RATE).mouth.open * 255) for f in frames]
    assert all(abs(a - b) <= 2 for a, b in zip(opens, expected, strict=True))  # yuv420p rounding
    assert seg.start_time < frames[-1].pts / VIDEO_CLOCK_RATE and max(opens) > 100
    # Rest frames repeat: read-only ones are converted once per run; a reused buffer every time.
    assert (video.conversions_saved > 15) if not writeable else (video.conversions_saved == 0)
    video.stop()


async def test_video_frame_mouth_matches_audio_at_same_clock_time() -> None:
    _fake, stage = make_stage(fps=25)
    seg = stage.schedule(tone_chunk(seconds=1.0), RampMouth(1.0))
    renderer = stage.renderer
    assert isinstance(renderer, PlainRenderer)
    video = StageVideoTrack(stage, InlineExecutor())
    opens = []
    for _ in range(30):
        frame = await video.recv()
        t = frame.pts / VIDEO_CLOCK_RATE
        expected = min(1.0, max(0.0, t - seg.start_time)) if t < seg.end_time else 0.0
        opens.append((renderer.states[-1].mouth.open, expected))
    for got, expected in opens:
        assert got == pytest.approx(expected, abs=1e-3)
    video.stop()


async def test_video_skips_frames_when_late_instead_of_queueing() -> None:
    fake, stage = make_stage(fps=25)
    video = StageVideoTrack(stage, InlineExecutor())
    await video.recv()
    fake.advance(1.0)  # the loop stalled for a second
    frame = await video.recv()
    assert video.frames_late == 1
    assert frame.pts / VIDEO_CLOCK_RATE >= stage.clock.time() - 0.04
    video.stop()


async def test_speaker_captions_then_interrupt() -> None:
    fake, stage = make_stage(auto=False)
    events: list[dict] = []
    source = ToneSource(seconds=0.5)
    speaker = Speaker(stage, source, lambda ph, d, lang: RampMouth(d), events.append)
    speaker.start()
    line = speaker.say("First sentence. Second sentence. Third sentence.")
    # Let the speaker schedule the first sentence and play 0.2 s of it.
    await fake.run_for(0.2)
    captions = [e for e in events if e["type"] == "caption"]
    assert captions and captions[0]["text"] == "First sentence"
    assert {"type": "state", "state": "speaking"} in events
    cut = speaker.interrupt()
    assert cut is line and line.interrupted
    assert not stage.is_speaking(stage.clock.time() + 0.1)
    assert events[-1] == {"type": "state", "state": "idle"}
    assert [e["text"] for e in events if e["type"] == "caption"] == ["First sentence"]
    await fake.run_for(0.1)
    # The queue keeps working after an interruption.
    speaker.say("After.")
    await fake.run_for(0.1)
    assert [e["text"] for e in events if e["type"] == "caption"][-1] == "After"
    await speaker.close()
