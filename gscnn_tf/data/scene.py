"""One procedural street scene in Cityscapes label ids: :func:`render_scene`.

A perspective road with a vanishing point, sidewalks, terrain, building facades with
windows, trees, fences, cars, people, poles carrying traffic signs and lights (thin and
small objects at a distance), some "static" clutter and the void labels ego vehicle and
out of roi. Colours are per-class base colours with per-object variation, shading
gradients, low-frequency and pixel noise. The scene is drawn back to front by the
``_draw_*`` steps; all randomness comes from the caller's ``rng``. The dataset writer is
:mod:`gscnn_tf.data.synthetic`.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Cityscapes label ids used by the generator.
EGO_VEHICLE, OUT_OF_ROI, STATIC = 1, 3, 4
ROAD, SIDEWALK, BUILDING, FENCE = 7, 8, 11, 13
POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN = 17, 19, 20
VEGETATION, TERRAIN, SKY = 21, 22, 23
PERSON, CAR = 24, 26

# Base RGB colour per label id (distinct, roughly realistic).
BASE_COLORS = {
    ROAD: (84, 78, 92),
    SIDEWALK: (176, 150, 160),
    BUILDING: (128, 100, 78),
    FENCE: (150, 120, 60),
    POLE: (160, 165, 170),
    TRAFFIC_LIGHT: (28, 30, 34),
    TRAFFIC_SIGN: (230, 200, 20),
    VEGETATION: (50, 125, 40),
    TERRAIN: (150, 170, 90),
    SKY: (120, 170, 235),
    PERSON: (210, 60, 70),
    CAR: (40, 70, 180),
    EGO_VEHICLE: (20, 20, 24),
    OUT_OF_ROI: (8, 8, 8),
    STATIC: (200, 120, 200),
}


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label_ids: np.ndarray  # (H, W) uint8 Cityscapes label ids
    instance_ids: np.ndarray  # (H, W) uint16


class _Canvas:
    def __init__(self, h: int, w: int, rng: np.random.Generator):
        self.h, self.w, self.rng = h, w, rng
        self.img = np.zeros((h, w, 3), np.float32)
        self.lab = np.zeros((h, w), np.uint8)
        self.inst = np.zeros((h, w), np.uint16)
        self._count = {}
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.yy, self.xx = yy / max(h - 1, 1), xx / max(w - 1, 1)

    def color(self, label: int, jitter: float = 18.0) -> np.ndarray:
        base = np.array(BASE_COLORS[label], np.float32)
        return np.clip(base + self.rng.normal(0, jitter, 3), 0, 255)

    def paint(self, mask: np.ndarray, label: int, color, instance: bool = False, shade: float = 0.0):
        """Paints ``mask`` (bool) with ``label`` and a colour; ``shade`` adds a random linear gradient."""
        if not mask.any():
            return
        color = np.asarray(color, np.float32)
        if shade:
            gy, gx = self.rng.normal(0, shade, 2)
            g = (gy * (self.yy[mask] - 0.5) + gx * (self.xx[mask] - 0.5))[:, None]
            self.img[mask] = color + g
        else:
            self.img[mask] = color
        self.lab[mask] = label
        if instance:
            k = self._count.get(label, 0)
            self._count[label] = k + 1
            self.inst[mask] = label * 1000 + k
        else:
            self.inst[mask] = label

    def poly(self, pts, label, color, instance=False, shade=0.0):
        self.paint(self.poly_mask(pts), label, color, instance, shade)

    def poly_mask(self, pts) -> np.ndarray:
        m = np.zeros((self.h, self.w), np.uint8)
        cv2.fillPoly(m, [np.round(np.asarray(pts, np.float64)).astype(np.int32)], 1)
        return m.astype(bool)

    def rect_mask(self, x0, y0, x1, y1) -> np.ndarray:
        m = np.zeros((self.h, self.w), bool)
        xs = np.clip(np.round([min(x0, x1), max(x0, x1)]), 0, self.w).astype(int)
        ys = np.clip(np.round([min(y0, y1), max(y0, y1)]), 0, self.h).astype(int)
        m[ys[0]:ys[1], xs[0]:xs[1]] = True
        return m

    def ellipse_mask(self, cx, cy, rx, ry) -> np.ndarray:
        m = np.zeros((self.h, self.w), np.uint8)
        cv2.ellipse(m, (int(round(cx)), int(round(cy))), (max(1, int(round(rx))), max(1, int(round(ry)))),
                    0, 0, 360, 1, -1)
        return m.astype(bool)


@dataclass
class _Layout:
    """The scene's perspective: horizon row, vanishing point and the ground lines' bottom x."""

    H: int
    W: int
    yh: float  # horizon row
    xv: float  # vanishing point column
    road_l: float = 0.0
    road_r: float = 0.0
    walk_l: float = 0.0
    walk_r: float = 0.0

    def depth(self, y):
        """0 at the horizon, 1 at the bottom row."""
        return np.clip((y - self.yh) / (self.H - self.yh), 0.0, 1.0)

    def line_x(self, x_bottom, y):
        """x on a ground line through (x_bottom, H) and the vanishing point."""
        return self.xv + (x_bottom - self.xv) * self.depth(y)


def _draw_sky_and_terrain(c: _Canvas, lay: _Layout) -> None:
    # Sky: vertical gradient, lighter at the horizon.
    sky = c.color(SKY, 12)
    m = np.ones((lay.H, lay.W), bool)
    c.paint(m, SKY, sky)
    c.img[m] += (c.yy[m] * 60.0)[:, None]
    # Terrain below the horizon.
    c.paint(c.rect_mask(0, lay.yh, lay.W, lay.H), TERRAIN, c.color(TERRAIN), shade=25)


def _plan_ground(lay: _Layout, rng: np.random.Generator) -> None:
    """Road and sidewalk edges at the bottom row (they converge at the vanishing point)."""
    W = lay.W
    lay.road_l = lay.xv - W * rng.uniform(0.45, 0.8)
    lay.road_r = lay.xv + W * rng.uniform(0.45, 0.8)
    lay.walk_l = lay.road_l - W * rng.uniform(0.25, 0.6)
    lay.walk_r = lay.road_r + W * rng.uniform(0.25, 0.6)


def _draw_buildings(c: _Canvas, lay: _Layout, rng: np.random.Generator) -> None:
    """Buildings along both sides; their bottoms follow the sidewalks' outer lines."""
    H, W, yh, xv = lay.H, lay.W, lay.yh, lay.xv
    for side in (-1, 1):
        outer = lay.walk_l if side < 0 else lay.walk_r
        x = 0.0 if side < 0 else float(W)
        end = xv - W * 0.04 if side < 0 else xv + W * 0.04
        step = 1 if side < 0 else -1  # left facades run rightwards to the vanishing point
        while (x < end) if side < 0 else (x > end):
            bw = max(2.0, W * rng.uniform(0.06, 0.2))
            x_next = x + step * bw
            if (x_next > end) if side < 0 else (x_next < end):
                x_next = end
            if rng.uniform() < 0.18:  # a gap: trees show through
                x = x_next
                continue
            hfac = rng.uniform(0.35, 0.9)

            def top(xx, hfac=hfac, outer=outer):
                return yh - hfac * H * 0.9 * abs(xx - xv) / max(abs(outer - xv), 1.0) - H * 0.02

            def bottom(xx, outer=outer):
                # y where the outer ground line passes x (below the horizon)
                t = (xx - xv) / (outer - xv) if outer != xv else 1.0
                return yh + max(t, 0.0) * (H - yh) + 2

            pts = [(x, top(x)), (x_next, top(x_next)), (x_next, bottom(x_next)), (x, bottom(x))]
            mask = c.poly_mask(pts)
            c.paint(mask, BUILDING, c.color(BUILDING, 25), shade=30)
            _draw_windows(c, lay, rng, mask, x, x_next, max(min(top(x), top(x_next)), 0))
            x = x_next


def _draw_windows(c: _Canvas, lay: _Layout, rng: np.random.Generator, facade: np.ndarray, x: float,
                  x_next: float, y_top: float) -> None:
    """Windows: darker (or lit) rectangles on a facade, still labelled building."""
    win = c.color(BUILDING, 10) * rng.uniform(0.35, 0.6)
    if rng.uniform() < 0.3:
        win = np.array([200, 190, 120], np.float32) + rng.normal(0, 10, 3)
    x0, x1 = sorted((x, x_next))
    nx = max(1, int((x1 - x0) / max(lay.W * 0.03, 3)))
    y_bot = lay.yh
    ny = max(1, int((y_bot - y_top) / max(lay.H * 0.06, 3)))
    for i in range(nx):
        for j in range(ny):
            cx0 = x0 + (i + 0.25) * (x1 - x0) / nx
            cx1 = x0 + (i + 0.7) * (x1 - x0) / nx
            cy0 = y_top + (j + 0.3) * (y_bot - y_top) / ny
            cy1 = y_top + (j + 0.75) * (y_bot - y_top) / ny
            wm = c.rect_mask(cx0, cy0, cx1, cy1) & facade
            if wm.any():
                c.img[wm] = win


def _draw_trees(c: _Canvas, lay: _Layout, rng: np.random.Generator) -> None:
    """Trees (vegetation): trunk + crown, mostly near the sidewalks' outer edges."""
    H, W, yh = lay.H, lay.W, lay.yh
    for _ in range(int(rng.integers(2, 6))):
        y = rng.uniform(yh + 0.05 * (H - yh), H * 0.95)
        s = lay.depth(y)
        side = rng.choice([-1, 1])
        xb = lay.line_x(lay.walk_l if side < 0 else lay.walk_r, y) + side * rng.uniform(0, 0.1) * W * s
        th = s * H * rng.uniform(0.6, 1.0)
        tw = max(1.0, s * W * 0.012)
        col = c.color(VEGETATION, 15)
        c.paint(c.rect_mask(xb - tw / 2, y - th * 0.5, xb + tw / 2, y), VEGETATION, col * 0.6)
        crown = c.ellipse_mask(xb, y - th * 0.7, s * W * rng.uniform(0.04, 0.1), th * 0.3)
        c.paint(crown, VEGETATION, col, shade=40)


def _draw_road(c: _Canvas, lay: _Layout) -> None:
    """Road and sidewalks (converging at the vanishing point), and the lane markings."""
    H, W, yh, xv, line_x = lay.H, lay.W, lay.yh, lay.xv, lay.line_x
    road_l, road_r, walk_l, walk_r = lay.road_l, lay.road_r, lay.walk_l, lay.walk_r
    c.poly([(road_l, H), (xv - 0.5, yh), (xv + 0.5, yh), (road_r, H)], ROAD, c.color(ROAD, 8), shade=20)
    c.poly([(walk_l, H), (xv - 0.5, yh), (line_x(road_l, yh + 1), yh + 1), (road_l, H)], SIDEWALK,
           c.color(SIDEWALK, 12), shade=20)
    c.poly([(road_r, H), (line_x(road_r, yh + 1), yh + 1), (xv + 0.5, yh), (walk_r, H)], SIDEWALK,
           c.color(SIDEWALK, 12), shade=20)
    # Lane markings (part of the road): dashes along the centre line.
    centre = (road_l + road_r) / 2
    mark = np.array([225, 225, 215], np.float32)
    n_dash = 8
    for k in range(n_dash):
        d0, d1 = (k + 0.2) / n_dash, (k + 0.6) / n_dash
        y0, y1 = yh + d0 ** 1.6 * (H - yh), yh + d1 ** 1.6 * (H - yh)
        hw0, hw1 = W * 0.006 * lay.depth(y0), W * 0.006 * lay.depth(y1)
        pts = [(line_x(centre, y0) - hw0, y0), (line_x(centre, y0) + hw0, y0),
               (line_x(centre, y1) + hw1, y1), (line_x(centre, y1) - hw1, y1)]
        m = c.poly_mask(pts) & (c.lab == ROAD)
        c.img[m] = mark


def _draw_fence(c: _Canvas, lay: _Layout, rng: np.random.Generator) -> None:
    """Sometimes a fence segment along a sidewalk's outer edge."""
    if rng.uniform() >= 0.6:
        return
    H, W, yh = lay.H, lay.W, lay.yh
    side = rng.choice([-1, 1])
    outer = lay.walk_l if side < 0 else lay.walk_r
    d0, d1 = sorted(rng.uniform(0.15, 1.0, 2))
    y0, y1 = yh + d0 * (H - yh), yh + d1 * (H - yh)
    x0, x1 = lay.line_x(outer, y0), lay.line_x(outer, y1)
    h0, h1 = d0 * H * 0.18, d1 * H * 0.18
    mask = c.poly_mask([(x0, y0), (x1, y1), (x1, y1 - h1), (x0, y0 - h0)])
    col = c.color(FENCE, 15)
    c.paint(mask, FENCE, col, shade=20)
    stripes = mask & ((np.arange(W)[None, :] // max(2, W // 64)) % 2 == 0)
    c.img[stripes] = col * 0.7


def _draw_car(c: _Canvas, lay: _Layout, rng: np.random.Generator, y: float, d: float) -> None:
    xl, xr = lay.line_x(lay.road_l, y), lay.line_x(lay.road_r, y)
    cw = d * lay.W * rng.uniform(0.25, 0.4)
    cx = rng.uniform(xl + cw / 2, max(xl + cw / 2, xr - cw / 2))
    ch = cw * rng.uniform(0.45, 0.6)
    col = c.color(CAR, 30)
    body = c.rect_mask(cx - cw / 2, y - ch * 0.65, cx + cw / 2, y - ch * 0.1)
    cabin = c.poly_mask([(cx - cw * 0.35, y - ch * 0.65), (cx - cw * 0.25, y - ch),
                         (cx + cw * 0.25, y - ch), (cx + cw * 0.35, y - ch * 0.65)])
    wheels = c.ellipse_mask(cx - cw * 0.3, y - ch * 0.12, cw * 0.09, ch * 0.12) | \
        c.ellipse_mask(cx + cw * 0.3, y - ch * 0.12, cw * 0.09, ch * 0.12)
    c.paint(body | cabin | wheels, CAR, col, instance=True, shade=30)
    window = c.poly_mask([(cx - cw * 0.28, y - ch * 0.66), (cx - cw * 0.21, y - ch * 0.93),
                          (cx + cw * 0.21, y - ch * 0.93), (cx + cw * 0.28, y - ch * 0.66)])
    c.img[window & (c.lab == CAR)] = (40, 50, 70)
    c.img[wheels] = (15, 15, 15)


def _draw_person(c: _Canvas, lay: _Layout, rng: np.random.Generator, y: float, d: float) -> None:
    side = rng.choice([-1, 1])
    a, b = (lay.walk_l, lay.road_l) if side < 0 else (lay.road_r, lay.walk_r)
    x = rng.uniform(lay.line_x(a, y), lay.line_x(b, y))
    ph = d * lay.H * rng.uniform(0.4, 0.55)
    pw = max(1.0, ph * 0.28)
    clothes = c.color(PERSON, 25)
    head = c.ellipse_mask(x, y - ph * 0.9, pw * 0.3, ph * 0.1)
    torso = c.rect_mask(x - pw / 2, y - ph * 0.8, x + pw / 2, y - ph * 0.45)
    legs = c.rect_mask(x - pw * 0.4, y - ph * 0.45, x - pw * 0.05, y) | \
        c.rect_mask(x + pw * 0.05, y - ph * 0.45, x + pw * 0.4, y)
    c.paint(head | torso | legs, PERSON, clothes, instance=True)
    c.img[head] = (225, 180, 150)
    c.img[legs] = clothes * 0.45


def _draw_pole(c: _Canvas, lay: _Layout, rng: np.random.Generator, y: float, d: float) -> None:
    """A pole carrying a traffic sign (square, diamond or disc) or a traffic light."""
    W = lay.W
    side = rng.choice([-1, 1])
    x = lay.line_x(lay.road_l if side < 0 else lay.road_r, y) - side * W * 0.01 * d
    x += side * rng.uniform(0.02, 0.12) * W * d
    ph = d * lay.H * rng.uniform(0.7, 1.0)
    pw = max(1.0, d * W * 0.01)
    c.paint(c.rect_mask(x - pw / 2, y - ph, x + pw / 2, y), POLE, c.color(POLE, 12))
    ss = max(2.0, d * W * 0.035)
    top = y - ph
    if rng.uniform() < 0.55:  # traffic sign: square, diamond or disc
        shape = rng.integers(0, 3)
        if shape == 0:
            m = c.rect_mask(x - ss / 2, top, x + ss / 2, top + ss)
        elif shape == 1:
            m = c.poly_mask([(x, top), (x + ss / 2, top + ss / 2), (x, top + ss), (x - ss / 2, top + ss / 2)])
        else:
            m = c.ellipse_mask(x, top + ss / 2, ss / 2, ss / 2)
        c.paint(m, TRAFFIC_SIGN, c.color(TRAFFIC_SIGN, 15))
    else:  # traffic light: dark box with one lit lamp
        m = c.rect_mask(x - ss * 0.3, top, x + ss * 0.3, top + ss * 1.2)
        c.paint(m, TRAFFIC_LIGHT, c.color(TRAFFIC_LIGHT, 6))
        lamp = c.ellipse_mask(x, top + ss * (0.25 if rng.uniform() < 0.5 else 0.95), ss * 0.15, ss * 0.15) & m
        c.img[lamp] = (230, 40, 30) if rng.uniform() < 0.5 else (40, 220, 80)


def _draw_static(c: _Canvas, lay: _Layout, rng: np.random.Generator, y: float, d: float) -> None:
    """Static clutter (void): a box on a sidewalk."""
    side = rng.choice([-1, 1])
    x = lay.line_x(lay.walk_l if side < 0 else lay.walk_r, y) - side * lay.W * 0.03 * d
    s = d * lay.W * rng.uniform(0.02, 0.05)
    c.paint(c.rect_mask(x - s, y - s * 1.2, x + s, y), STATIC, c.color(STATIC, 30))


_OBJECT_DRAWERS = {"car": _draw_car, "person": _draw_person, "pole": _draw_pole, "static": _draw_static}


def _draw_objects(c: _Canvas, lay: _Layout, rng: np.random.Generator) -> None:
    """Objects standing on the ground at random depths, painted far to near."""
    objects = []
    for _ in range(int(rng.integers(2, 7))):  # cars on the road
        objects.append(("car", rng.uniform(0.08, 1.0)))
    for _ in range(int(rng.integers(1, 6))):  # people on the sidewalks
        objects.append(("person", rng.uniform(0.1, 1.0)))
    for _ in range(int(rng.integers(2, 6))):  # poles with signs / lights
        objects.append(("pole", rng.uniform(0.08, 0.95)))
    for _ in range(int(rng.integers(0, 3))):  # static clutter (void)
        objects.append(("static", rng.uniform(0.2, 1.0)))
    objects.sort(key=lambda o: o[1])
    for kind, d in objects:
        _OBJECT_DRAWERS[kind](c, lay, rng, lay.yh + d * (lay.H - lay.yh), d)


def _draw_void(c: _Canvas, lay: _Layout, rng: np.random.Generator) -> None:
    """Ego vehicle (hood at the bottom) and an out-of-roi frame, both void."""
    H, W = lay.H, lay.W
    if rng.uniform() < 0.8:
        hood_h = H * rng.uniform(0.05, 0.1)
        m = c.ellipse_mask(W / 2, H + hood_h * 0.3, W * 0.7, hood_h * 1.3)
        c.paint(m, EGO_VEHICLE, c.color(EGO_VEHICLE, 5), shade=15)
    border = max(1, int(round(min(H, W) * 0.01)))
    m = np.zeros((H, W), bool)
    m[:border] = m[-border:] = True
    m[:, :border] = m[:, -border:] = True
    c.paint(m, OUT_OF_ROI, BASE_COLORS[OUT_OF_ROI])


def _finish_image(c: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Texture: illumination, low-frequency variation, pixel noise, slight blur -> uint8 RGB."""
    H, W = c.h, c.w
    img = c.img
    img *= 1.0 + rng.uniform(-0.12, 0.12) * (c.xx[..., None] - 0.5)
    low = rng.normal(0, 1, (max(2, H // 16), max(2, W // 16), 1)).astype(np.float32)
    low = cv2.resize(low, (W, H), interpolation=cv2.INTER_CUBIC)[..., None]
    img += 8.0 * low
    img += rng.normal(0, 5.0, img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def render_scene(height: int, width: int, rng: np.random.Generator) -> Scene:
    """Draws one street scene, back to front; all randomness comes from ``rng``.

    The order of the steps (and so of the draws from ``rng``) fixes the scene a seed gives.
    """
    c = _Canvas(height, width, rng)
    lay = _Layout(height, width, yh=height * rng.uniform(0.36, 0.5), xv=width * rng.uniform(0.38, 0.62))
    _draw_sky_and_terrain(c, lay)
    _plan_ground(lay, rng)
    _draw_buildings(c, lay, rng)
    _draw_trees(c, lay, rng)
    _draw_road(c, lay)
    _draw_fence(c, lay, rng)
    _draw_objects(c, lay, rng)
    _draw_void(c, lay, rng)
    image = _finish_image(c, rng)
    return Scene(image=image, label_ids=c.lab.copy(), instance_ids=c.inst.copy())
