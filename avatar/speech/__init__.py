"""Speech in and out: TTS engines, lip-sync, and (later) VAD and ASR."""
