"""Text-to-speech engines behind one interface (see ``base.TTSEngine``)."""
