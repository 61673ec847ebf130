"""Speech recognition: one ``SpeechRecognizer`` protocol, one module per engine."""

from avatar.speech.asr.base import ASRError, PartialSchedule, SpeechRecognizer, Transcript
from avatar.speech.asr.prompt import domain_prompt
from avatar.speech.asr.registry import ASRSettings, build_recognizer

__all__ = [
    "ASRError",
    "ASRSettings",
    "PartialSchedule",
    "SpeechRecognizer",
    "Transcript",
    "build_recognizer",
    "domain_prompt",
]
