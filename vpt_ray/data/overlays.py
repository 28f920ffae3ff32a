"""Make recorded gameplay look like a web upload, with ground truth for the clean filter to be scored against.

VPT's unlabeled data are videos found by keyword search (method doc §1, §2): their titles and descriptions
decide the metadata filters (blacklist, early-game keywords), and many of their frames are not clean gameplay:
channel logos and face-cams drawn over the game ("artifacts"), intro cards, menus and talking heads ("none of
the above"). :func:`plan_web_video` draws such a video's plan from an RNG and :class:`WebVideo` applies it to a
stream of gameplay frames, saying for every output frame which of :data:`FRAME_CLASSES` it belongs to and
which gameplay frame (if any) it shows.

Everything is drawn with OpenCV at any frame size (sizes scale with the frame); a plan is decided before the
episode ends, so the frames can be streamed to the encoder: overlays and breaks are placed in gameplay-frame
time and simply do not happen if the episode ends first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from vpt_ray.data.recordings import FRAME_CLASSES

CLEAN, ARTIFACTS, NONE = FRAME_CLASSES
TITLE_KINDS = ("early_game", "neutral", "blacklisted")

# Hooks and activities avoid every early-game and blacklist keyword, so a title's kind is decided by its template.
_HOOKS = (
    "punching trees", "my first pickaxe", "can I survive?", "zombies everywhere", "diamonds?!",
    "the hunt for iron", "cozy base", "lava lake", "first night", "a cave full of coal",
)  # fmt: skip
_TITLES: dict[str, tuple[str, ...]] = {
    "early_game": (
        "Crafter Let's Play Episode 1 - {hook}", "Crafter Survival Ep. 1: {hook}", "Day 1 in Crafter | {hook}",
        "Crafter Part 1 - {hook}", "Starting over in Crafter ({hook})", "A fresh world: Crafter survival",
        "Crafter from scratch! {hook}", "New world, new me - Crafter #1", "The beginning - Crafter {hook}",
    ),
    "neutral": (
        "Crafter Let's Play Episode {n} - {hook}", "Crafter Survival Ep. {n}: {hook}", "Crafter: {hook} (part {n})",
        "Iron pickaxe at last! Crafter survival #{n}", "Mining trip gone wrong | Crafter", "Crafter survival - {hook}",
        "Day {n} in Crafter | {hook}",
    ),
    "blacklisted": (
        "Crafter xbox 360 edition - {hook}", "Crafter timelapse: {n} days in one video",
        "Crafter multiplayer with friends - {hook}", "Crafter pocket edition | {hook}",
        "Crafter skyblock challenge ep {n}", "How to install Crafter mods ({hook})", "Crafter animation: {hook}",
        "Crafter on PS4 - {hook}",
    ),
}  # fmt: skip
_ACTIVITIES = (
    "go mining for iron", "build a furnace", "fight off zombies at night", "look for diamonds",
    "make a stone pickaxe", "find water and cows", "explore a huge cave",
)  # fmt: skip
_DESCRIPTIONS = (
    "Welcome back to the channel! Today we {activity}. Leave a like if you enjoyed it and subscribe for more "
    "Crafter videos.",
    "In this video I {activity}. Timestamps in the comments. Thanks for watching!",
    "{activity_cap}... what could go wrong? Music: royalty-free lo-fi beats.",
    "",
)


def make_title(rng: np.random.Generator, kind: str | None = None) -> tuple[str, str, str]:
    """A web-style ``(title, description, kind)``; ``kind`` (see :data:`TITLE_KINDS`) is drawn if not given."""
    if kind is None:
        kind = TITLE_KINDS[int(rng.choice(len(TITLE_KINDS), p=[0.35, 0.45, 0.2]))]
    if kind not in _TITLES:
        raise ValueError(f"title kind must be one of {TITLE_KINDS}, got {kind!r}")
    templates = _TITLES[kind]
    n = int(rng.integers(2, 60))
    hook = _HOOKS[int(rng.integers(len(_HOOKS)))]
    title = templates[int(rng.integers(len(templates)))].format(n=n, hook=hook)
    activity = _ACTIVITIES[int(rng.integers(len(_ACTIVITIES)))]
    description = _DESCRIPTIONS[int(rng.integers(len(_DESCRIPTIONS)))].format(
        activity=activity, activity_cap=activity[0].upper() + activity[1:]
    )
    return title, description, kind


# profile -> probability; what each adds is in plan_web_video.
PROFILES: dict[str, float] = {
    "clean": 0.3, "intro_outro": 0.25, "facecam": 0.15, "streamer": 0.1, "watermark": 0.1, "mixed": 0.1,
}  # fmt: skip


@dataclass(frozen=True)
class WebPlan:
    """What happens to a video, in frames; spans are [start, end) in *gameplay* frames."""

    profile: str
    intro: int = 0
    outro: int = 0
    breaks: tuple[tuple[int, str, int], ...] = ()  # (before gameplay frame, "menu" | "talking_head", frames)
    facecam: tuple[tuple[int, int], ...] = ()
    watermark: tuple[tuple[int, int], ...] = ()
    corner: int = 0  # watermark corner: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    palette_seed: int = 0


def plan_web_video(rng: np.random.Generator, expected_frames: int, profile: str | None = None, fps: int = 20) -> WebPlan:
    """Draw a plan for a video whose gameplay is expected to last about ``expected_frames`` frames."""
    if profile is None:
        names = list(PROFILES)
        profile = names[int(rng.choice(len(names), p=list(PROFILES.values())))]
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {list(PROFILES)}, got {profile!r}")
    L = max(int(expected_frames), 1)

    def seconds(lo: float, hi: float) -> int:
        return int(rng.integers(int(lo * fps), int(hi * fps) + 1))

    def span(lo: float, hi: float) -> tuple[int, int]:
        start = int(rng.uniform(0, 0.3) * L)
        return start, start + max(int(rng.uniform(lo, hi) * L), 1)

    common = {"profile": profile, "corner": int(rng.integers(4)), "palette_seed": int(rng.integers(2**31))}
    if profile == "clean":
        return WebPlan(**common)
    if profile == "intro_outro":
        return WebPlan(**common, intro=seconds(1, 3), outro=seconds(1, 2.5))
    if profile == "facecam":
        return WebPlan(**common, facecam=(span(0.2, 0.6),))
    if profile == "streamer":
        return WebPlan(**common, intro=seconds(0.5, 1.5), facecam=((0, L * 10),), watermark=((0, L * 10),))
    if profile == "watermark":
        return WebPlan(**common, watermark=((0, L * 10),))
    at = int(rng.uniform(0.2, 0.7) * L)
    return WebPlan(
        **common,
        intro=seconds(1, 3),
        outro=seconds(1, 2),
        breaks=((at, str(rng.choice(["menu", "talking_head"])), seconds(1, 4)),),
        watermark=(span(0.3, 0.7),),
    )


class WebVideo:
    """Applies a :class:`WebPlan` to gameplay frames as they come.

    ``opening()``, then ``gameplay(t, frame)`` for t = 0, 1, ..., then ``ending()``; each yields
    ``(frame, class, gameplay_t | None)`` for the frames of the output video in order.
    """

    def __init__(self, plan: WebPlan, frame_size: tuple[int, int]):
        self.plan = plan
        self.h, self.w = int(frame_size[0]), int(frame_size[1])
        self.unit = min(self.h, self.w) / 64.0
        prng = np.random.default_rng(plan.palette_seed)
        self.colors = prng.integers(40, 230, size=(6, 3)).astype(np.uint8)
        self.skin = np.array(prng.choice([[224, 172, 140], [198, 134, 66], [141, 85, 36], [255, 219, 172]]), np.uint8)
        self.phase = float(prng.uniform(0, 2 * math.pi))
        self._out_t = 0  # output frames so far: animations run on video time

    # -- the three stages ---------------------------------------------------------------------------------------
    def opening(self) -> Iterator[tuple[np.ndarray, str, int | None]]:
        for i in range(self.plan.intro):
            yield self._emit(self._card(i, self.plan.intro, "EP" if self.plan.profile != "streamer" else "LIVE"), NONE)

    def gameplay(self, t: int, frame: np.ndarray) -> Iterator[tuple[np.ndarray, str, int | None]]:
        for at, kind, n in self.plan.breaks:
            if at == t:
                for i in range(n):
                    picture = self._menu(i) if kind == "menu" else self._face(np.zeros((self.h, self.w, 3), np.uint8),
                                                                             (0, 0, self.w, self.h), i)  # fmt: skip
                    yield self._emit(picture, NONE)
        out, cls = frame, CLEAN
        if _within(t, self.plan.facecam):
            out, cls = self._facecam(out), ARTIFACTS
        if _within(t, self.plan.watermark):
            out, cls = self._watermark(out), ARTIFACTS
        yield self._emit(out, cls, t)

    def ending(self) -> Iterator[tuple[np.ndarray, str, int | None]]:
        for i in range(self.plan.outro):
            yield self._emit(self._card(i, self.plan.outro, "BYE", subscribe=True), NONE)

    def _emit(self, frame: np.ndarray, cls: str, t: int | None = None):
        self._out_t += 1
        return frame, cls, t

    # -- drawing ------------------------------------------------------------------------------------------------
    def _text(self, img: np.ndarray, text: str, center: tuple[int, int], scale: float, color) -> None:
        import cv2

        font = cv2.FONT_HERSHEY_SIMPLEX
        thickness = max(1, int(round(self.unit)))
        (tw, th), _ = cv2.getTextSize(text, font, scale * self.unit, thickness)
        org = (int(center[0] - tw / 2), int(center[1] + th / 2))
        cv2.putText(img, text, org, font, scale * self.unit, tuple(int(c) for c in color), thickness, cv2.LINE_AA)

    def _card(self, i: int, n: int, text: str, subscribe: bool = False) -> np.ndarray:
        """An intro/outro card: a moving two-colour gradient with a big caption sliding in."""
        a, b = self.colors[0].astype(np.float32), self.colors[1].astype(np.float32)
        ys = np.linspace(0, 1, self.h, dtype=np.float32)[:, None, None]
        xs = np.linspace(0, 1, self.w, dtype=np.float32)[None, :, None]
        mix = (0.5 + 0.5 * np.sin(2 * math.pi * (xs + ys) + 0.15 * i + self.phase)).astype(np.float32)
        img = (a * mix + b * (1 - mix)).astype(np.uint8)
        slide = min(1.0, (i + 1) / max(n / 3, 1))
        self._text(img, text, (int(self.w * (0.5 * slide)), int(self.h * 0.45)), 0.6, (255, 255, 255))
        if subscribe:
            import cv2

            x0, y0 = int(self.w * 0.25), int(self.h * 0.68)
            cv2.rectangle(img, (x0, y0), (int(self.w * 0.75), int(self.h * 0.85)), (220, 20, 30), -1)
        return img

    def _menu(self, i: int) -> np.ndarray:
        """A game menu: dark textured background, a title bar and a column of buttons, one highlighted."""
        import cv2

        rng = np.random.default_rng(self.plan.palette_seed + 7)
        img = (rng.integers(40, 70, size=(self.h, self.w, 1)) * np.array([1.0, 0.8, 0.6])).astype(np.uint8)
        cv2.rectangle(img, (int(self.w * 0.15), int(self.h * 0.08)), (int(self.w * 0.85), int(self.h * 0.22)),
                      (200, 200, 200), -1)  # fmt: skip
        selected = (i // 10) % 3
        for k in range(3):
            y0 = int(self.h * (0.35 + 0.2 * k))
            color = (160, 160, 230) if k == selected else (130, 130, 130)
            cv2.rectangle(img, (int(self.w * 0.2), y0), (int(self.w * 0.8), y0 + int(self.h * 0.13)), color, -1)
        return img

    def _face(self, img: np.ndarray, box: tuple[int, int, int, int], i: int) -> np.ndarray:
        """A talking head filling ``box`` (x, y, w, h): a room background, hair, face, blinking eyes, mouth."""
        import cv2

        x, y, w, h = box
        img[y : y + h, x : x + w] = self.colors[2]
        img[y + int(h * 0.75) : y + h, x : x + w] = self.colors[3]  # a chair / desk
        bob = int(round(math.sin(0.3 * i + self.phase) * h * 0.03))
        cx, cy = x + w // 2, y + int(h * 0.5) + bob
        fw, fh = max(int(w * 0.22), 2), max(int(h * 0.3), 2)
        cv2.ellipse(img, (cx, cy - int(fh * 0.3)), (int(fw * 1.1), int(fh * 0.9)), 0, 0, 360,
                    tuple(int(c) for c in self.colors[4]), -1)  # hair  # fmt: skip
        cv2.ellipse(img, (cx, cy), (fw, fh), 0, 0, 360, tuple(int(c) for c in self.skin), -1)
        if (i + int(self.phase * 10)) % 40 != 0:  # blink now and then
            for ex in (-1, 1):
                cv2.circle(img, (cx + ex * int(fw * 0.45), cy - int(fh * 0.2)), max(1, int(fw * 0.12)), (30, 30, 30), -1)
        mouth = max(1, int(fh * 0.25 * (0.5 + 0.5 * math.sin(1.3 * i))))
        cv2.ellipse(img, (cx, cy + int(fh * 0.45)), (max(int(fw * 0.35), 1), mouth // 2 + 1), 0, 0, 360, (120, 30, 40), -1)
        return img

    def _facecam(self, frame: np.ndarray) -> np.ndarray:
        """A picture-in-picture webcam box drifting slowly around the frame, with a white border."""
        import cv2

        out = frame.copy()
        bw, bh = max(int(self.w * 0.34), 8), max(int(self.h * 0.3), 8)
        t = self._out_t
        fx = 0.5 + 0.5 * math.sin(2 * math.pi * t / 400 + self.phase)
        fy = 0.5 + 0.5 * math.cos(2 * math.pi * t / 650 + 1.3 * self.phase)
        x, y = int(fx * (self.w - bw)), int(fy * (self.h - bh))
        self._face(out, (x, y, bw, bh), t)
        cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), (255, 255, 255), 1)
        return out

    def _watermark(self, frame: np.ndarray) -> np.ndarray:
        """A semi-transparent channel logo (red rounded box with a white play triangle) in a corner."""
        import cv2

        logo = np.zeros(frame.shape, np.uint8)
        mask = np.zeros(frame.shape[:2], np.uint8)
        lw, lh = max(int(self.w * 0.2), 6), max(int(self.h * 0.14), 4)
        m = max(int(self.unit * 2), 1)
        x = m if self.plan.corner in (0, 2) else self.w - lw - m
        y = m if self.plan.corner in (0, 1) else self.h - lh - m
        cv2.rectangle(logo, (x, y), (x + lw, y + lh), (230, 30, 40), -1)
        cv2.rectangle(mask, (x, y), (x + lw, y + lh), 255, -1)
        tri = np.array([[x + lw * 0.38, y + lh * 0.22], [x + lw * 0.38, y + lh * 0.78], [x + lw * 0.68, y + lh * 0.5]])
        cv2.fillPoly(logo, [tri.astype(np.int32)], (255, 255, 255))
        alpha = (mask[..., None] / 255.0) * 0.75
        return (frame * (1 - alpha) + logo * alpha).astype(np.uint8)


def _within(t: int, spans: tuple[tuple[int, int], ...]) -> bool:
    return any(a <= t < b for a, b in spans)
