"""The renderer contract shared by illustrated and photo avatars."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from avatar.face_state import FaceState


class AvatarRenderer(Protocol):
    """Draws one avatar look. Instances are per stage (they may cache), never shared across threads
    concurrently; ``render`` is called from a worker thread, never on the event loop.
    """

    name: str
    width: int
    height: int

    def render(self, state: FaceState) -> np.ndarray:
        """Return an RGB ``uint8`` array of shape ``(height, width, 3)``. May return a cached array:
        callers must not modify it."""
        ...

    def render_rgba(self, state: FaceState) -> np.ndarray:
        """Return the avatar over a transparent background: ``uint8`` ``(height, width, 4)``,
        straight (not premultiplied) alpha, anti-aliased edges. Used by the broadcast overlay."""
        ...
