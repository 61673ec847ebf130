"""Avatar renderers: turn a ``FaceState`` into pixels."""
