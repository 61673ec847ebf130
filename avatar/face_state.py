"""What a renderer draws: one frame's face, in parameters every avatar kind understands.

Lip-sync, the idle animation and (later) face tracking all produce ``FaceState``s;
illustrated and photo renderers consume them. Keeping this the only contract between
animation and drawing is what lets an operator's webcam drive any avatar.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True, slots=True)
class MouthShape:
    """Mouth parameters, all dimensionless.

    open:   jaw/lip opening, 0 closed .. 1 widest vowel ("aa").
    width:  -1 pursed/rounded narrow ("ou") .. 0 neutral .. 1 spread ("E", "ih").
    round:  0 .. 1 lip protrusion/rounding ("oh", "ou").
    press:  0 .. 1 lips pressed together (bilabials "PP").
    tuck:   0 .. 1 lower lip tucked under the upper teeth ("FF").
    tongue: 0 .. 1 tongue tip visible behind the teeth ("TH", "DD", "nn").
    teeth:  0 .. 1 how much of the teeth shows when the lips part ("SS", "CH").
    """

    open: float = 0.0
    width: float = 0.0
    round: float = 0.0
    press: float = 0.0
    tuck: float = 0.0
    tongue: float = 0.0
    teeth: float = 0.0

    def lerp(self, other: MouthShape, t: float) -> MouthShape:
        s = 1.0 - t
        return MouthShape(
            self.open * s + other.open * t,
            self.width * s + other.width * t,
            self.round * s + other.round * t,
            self.press * s + other.press * t,
            self.tuck * s + other.tuck * t,
            self.tongue * s + other.tongue * t,
            self.teeth * s + other.teeth * t,
        )

    def as_tuple(self) -> tuple[float, float, float, float, float, float, float]:
        return (self.open, self.width, self.round, self.press, self.tuck, self.tongue, self.teeth)


REST_MOUTH = MouthShape()


@dataclass(frozen=True, slots=True)
class FaceState:
    """One frame's pose and expression.

    Angles are degrees (yaw + turns the avatar's face to its left, i.e. the viewer's right;
    pitch + looks up; roll + tilts the head clockwise as seen by the viewer).
    eye_close_*: 0 open .. 1 shut. brow: -1 frown .. 0 .. 1 raised. smile: 0 .. 1.
    breath: 0 .. 1, the breathing cycle (shoulders and chest rise). gaze_x/gaze_y: -1 .. 1.
    """

    mouth: MouthShape = field(default_factory=MouthShape)
    eye_close_left: float = 0.0
    eye_close_right: float = 0.0
    brow: float = 0.0
    smile: float = 0.2
    head_yaw: float = 0.0
    head_pitch: float = 0.0
    head_roll: float = 0.0
    breath: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0

    def with_mouth(self, mouth: MouthShape) -> FaceState:
        return replace(self, mouth=mouth)


NEUTRAL_FACE = FaceState()
