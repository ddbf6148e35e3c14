"""napari prompt layers -> per-slice model prompts: the one home of the coordinate conversions.

Qt-free and napari-free: layers are used through their public attributes and methods only
(``data``, ``features``, ``data_to_world``, ``world_to_data``...).

Coordinates. napari orders axes ``(..., row, col)``; the models take ``(x, y) = (col, row)``.
:func:`layer_to_image` is the one place that maps a prompt layer's data coordinates through
world coordinates into the image layer's data (pixel) coordinates, and :func:`rowcol_to_xy`
is the one place that flips ``(row, col)`` into ``(x, y)``.

Slices. A :class:`Plane` is the 2D slice of the image shown on screen: the last two axes of
the viewer's dims order are its rows and columns; every other axis is fixed at an index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medsam.base.boxes import BoxXYXY

#: Half a pixel: prompt vertices further than this off a slice lie outside it.
_SLICE_TOLERANCE = 0.5


@dataclass(frozen=True, order=True)
class Plane:
    """A 2D slice of an nD array: rows along ``row_axis``, columns along ``col_axis``.

    ``fixed`` holds ``(axis, index)`` for every other spatial axis, sorted by axis.
    """

    row_axis: int
    col_axis: int
    fixed: tuple[tuple[int, int], ...] = ()

    @property
    def ndim(self) -> int:
        """Number of spatial axes of the array the plane is cut from."""
        return len(self.fixed) + 2

    def index(self) -> tuple[int | slice, ...]:
        """Basic index selecting the plane (trailing non-spatial axes, e.g. RGB, kept)."""
        idx: list[int | slice] = [slice(None)] * self.ndim
        for axis, i in self.fixed:
            idx[axis] = i
        return tuple(idx)

    def extract(self, data: Any) -> np.ndarray:
        """The plane of ``data`` as ``(rows, cols[, channels])``."""
        sub = np.asarray(data[self.index()])
        return np.swapaxes(sub, 0, 1) if self.row_axis > self.col_axis else sub

    def indices(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
        """nD fancy-index arrays of the plane pixels ``(rows, cols)``."""
        rows = np.asarray(rows, dtype=np.intp)
        out: list[np.ndarray] = [rows] * self.ndim
        out[self.row_axis] = rows
        out[self.col_axis] = np.asarray(cols, dtype=np.intp)
        for axis, i in self.fixed:
            out[axis] = np.full_like(rows, i)
        return tuple(out)

    def describe(self) -> str:
        """Short human-readable name, e.g. ``'axis 0 = 12'`` (``'2D'`` without fixed axes)."""
        return ", ".join(f"axis {a} = {i}" for a, i in self.fixed) or "2D"


@dataclass(frozen=True)
class BoxPrompt:
    """A box prompt on one plane, ``box_xyxy`` in pixels of that plane."""

    plane: Plane
    box_xyxy: BoxXYXY
    source_index: int


@dataclass(frozen=True)
class ClickPrompt:
    """A click prompt on one plane, ``xy`` in pixels of that plane."""

    plane: Plane
    xy: tuple[float, float]
    positive: bool
    source_index: int


#: Why a prompt is skipped (:attr:`PromptProblem.reason`), and what to do about it.
OUTSIDE, TILTED = "lies outside the image", "is not drawn on a slice"
TINY = "is less than a pixel wide or high"
FIXES = {
    OUTSIDE: "draw it on the image",
    TILTED: "draw it in the 2D view, on one slice",
    TINY: "draw it around the object",
}


@dataclass(frozen=True)
class PromptProblem:
    """A box or click that cannot be used: its ``kind`` ("box", "click"), its ``row`` in its layer,
    why (:data:`OUTSIDE`, :data:`TILTED`, :data:`TINY`) and where it lies in the world (the mean of
    its vertices): what names it for the user (see :func:`describe_problem`)."""

    kind: str
    row: int
    reason: str
    world: tuple[float, ...]


@dataclass
class ObjectPrompt:
    """Everything the model gets for one object on one plane."""

    plane: Plane
    box_xyxy: BoxXYXY | None = None
    points_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    box_index: int | None = None
    point_indices: tuple[int, ...] = ()

    @property
    def has_points(self) -> bool:
        return len(self.point_labels) > 0


# --------------------------------------------------------------------------- coordinates


def rowcol_to_xy(rowcol: np.ndarray) -> np.ndarray:
    """``(..., 2)`` array of ``(row, col)`` -> ``(x, y)``: the only axis flip in the plugin."""
    rowcol = np.asarray(rowcol, dtype=float)
    if rowcol.shape[-1:] != (2,):
        raise ValueError(f"expected (..., 2) coordinates, got shape {rowcol.shape}")
    return rowcol[..., ::-1].copy()


def spatial_shape(image_layer: Any) -> tuple[int, ...]:
    """Spatial shape of an image layer (highest resolution level, RGB axis dropped)."""
    data = image_layer.data[0] if image_layer.multiscale else image_layer.data
    return tuple(int(s) for s in data.shape[: image_layer.ndim])


def layer_to_image(
    layer: Any, coords: np.ndarray, image_layer: Any, world_point: Sequence[float]
) -> np.ndarray:
    """Map ``(N, layer.ndim)`` data coordinates of ``layer`` to image data coordinates.

    Goes through world coordinates with each layer's own transforms (scale, translate,
    rotate, shear, affine). World axes the prompt layer lacks (a 2D prompt layer over a 3D
    image) take their value from ``world_point``, the viewer's current position.
    """
    coords = np.atleast_2d(np.asarray(coords, dtype=float))
    base = np.asarray(world_point, dtype=float)
    out = np.empty((len(coords), image_layer.ndim))
    for k, c in enumerate(coords):
        world = np.asarray(layer.data_to_world(c), dtype=float)
        full = base.copy()
        if len(world) > len(full):
            raise ValueError(f"layer {layer.name!r} has more dimensions than the viewer")
        full[len(full) - len(world) :] = world
        out[k] = image_layer.world_to_data(full)
    return out


def slider_step(position: float, axis_range: Sequence[float]) -> int:
    """The slider position napari shows for a world ``position`` on an axis of ``(start, stop, step)``."""
    start, _, step = axis_range
    return round((position - start) / step) if step else 0


def slider_positions(
    image_layer: Any,
    world_point: Sequence[float],
    axis: int,
    indices: Iterable[int],
    dims_range: Sequence[Sequence[float]],
) -> list[tuple[int, float]]:
    """(slider position, world position) of each array index in ``indices`` along ``image_layer``'s
    data ``axis``, the other axes at the viewer's ``world_point``; the slider position is the index
    itself where the viewer has no slider range for that axis."""
    point = np.asarray(image_layer.world_to_data(np.asarray(world_point, dtype=float)), dtype=float)
    world_axis = axis + len(world_point) - image_layer.ndim
    in_range = len(dims_range) > world_axis and dims_range[world_axis][2]
    out = []
    for z in indices:
        point[axis] = z
        position = float(np.asarray(image_layer.data_to_world(point))[world_axis])
        out.append((slider_step(position, dims_range[world_axis]) if in_range else int(z), position))
    return out


def slider_position(
    world: Sequence[float], dims_order: Sequence[int], dims_range: Sequence[Sequence[float]]
) -> int | None:
    """The position of the slider nearest the displayed axes at the world point ``world``, as napari
    shows it (None: no slider, a 2D view of a 2D world)."""
    sliders = list(dims_order)[:-2]
    if not sliders or len(dims_range) <= sliders[-1] or len(world) <= sliders[-1]:
        return None
    return slider_step(float(world[sliders[-1]]), dims_range[sliders[-1]])


def describe_problem(
    problem: PromptProblem, dims_order: Sequence[int], dims_range: Sequence[Sequence[float]], name: str = ""
) -> str:
    """``"The box 'liver' on slice 12 lies outside the image"``: a prompt as the user sees it (its
    name, the slider position it was drawn at), never a row number."""
    what = f"The {problem.kind} {name!r}" if name else f"A {problem.kind}"
    position = slider_position(problem.world, dims_order, dims_range)
    where = "" if position is None else f" on slice {position}"
    return f"{what}{where} {problem.reason}"


def plane_axes(dims_order: Sequence[int], world_ndim: int, image_ndim: int) -> tuple[int, int]:
    """Image axes shown as (rows, cols): the last two world axes of the viewer's dims order."""
    if image_ndim < 2:
        raise ValueError("the image must have at least two spatial dimensions")
    offset = world_ndim - image_ndim
    row, col = (int(a) - offset for a in list(dims_order)[-2:])
    if min(row, col) < 0:
        raise ValueError("the image is not shown as a 2D slice: its axes are not among the displayed ones")
    return row, col


def slider_axis(dims_order: Sequence[int], world_ndim: int, image_ndim: int) -> int | None:
    """The image axis the slider nearest the displayed axes moves (None: the image has no such axis)."""
    offset = world_ndim - image_ndim
    for world_axis in reversed(list(dims_order)[:-2]):
        if int(world_axis) - offset >= 0:
            return int(world_axis) - offset
    return None


def current_plane(image_layer: Any, world_point: Sequence[float], dims_order: Sequence[int]) -> Plane:
    """The plane of the image the viewer shows at ``world_point``."""
    row, col = plane_axes(dims_order, len(world_point), image_layer.ndim)
    pos = np.asarray(image_layer.world_to_data(np.asarray(world_point, dtype=float)))
    shape = spatial_shape(image_layer)
    fixed = []
    for axis in range(image_layer.ndim):
        if axis in (row, col):
            continue
        i = round(float(pos[axis]))
        if not 0 <= i < shape[axis]:
            raise ValueError(f"the current slice (axis {axis} = {i}) is outside the image")
        fixed.append((axis, i))
    return Plane(row, col, tuple(fixed))


def _plane_of(vertices: np.ndarray, row: int, col: int, shape: Sequence[int]) -> Plane | str:
    """Plane through image-coordinate ``vertices``, or the reason there is none."""
    fixed = []
    for axis in range(vertices.shape[1]):
        if axis in (row, col):
            continue
        values = vertices[:, axis]
        if np.ptp(values) > 2 * _SLICE_TOLERANCE:
            return TILTED
        i = round(float(values.mean()))
        if not 0 <= i < shape[axis]:
            return OUTSIDE
        fixed.append((axis, i))
    return Plane(row, col, tuple(fixed))


def _world_of(layer: Any, vertices: np.ndarray, world_point: Sequence[float]) -> tuple[float, ...]:
    """The mean world position of a prompt's ``vertices`` (data coordinates of ``layer``); the axes
    a 2D layer lacks are the viewer's position."""
    world = np.asarray([layer.data_to_world(v) for v in np.atleast_2d(vertices)], dtype=float).mean(0)
    full = np.asarray(world_point, dtype=float).copy()
    full[len(full) - len(world) :] = world
    return tuple(float(v) for v in full)


def boxes_from_shapes(
    shapes_layer: Any,
    image_layer: Any,
    world_point: Sequence[float],
    dims_order: Sequence[int],
) -> tuple[list[BoxPrompt], list[PromptProblem]]:
    """Bounding boxes of every shape, per plane, in image pixels; plus problems found.

    Each shape's vertices are mapped into the image; its bounding box on the displayed axes,
    clipped to the image, is the prompt. Any shape type works (rectangles are the usual).
    Shapes off the image, not parallel to the displayed slice or less than a pixel across are
    skipped, each with a :class:`PromptProblem`.
    """
    row, col = plane_axes(dims_order, len(world_point), image_layer.ndim)
    shape = spatial_shape(image_layer)
    height, width = shape[row], shape[col]
    boxes: list[BoxPrompt] = []
    problems: list[PromptProblem] = []
    for k, verts in enumerate(shapes_layer.data):
        img = layer_to_image(shapes_layer, verts, image_layer, world_point)
        plane = _plane_of(img, row, col, shape)
        (x0, y0), (x1, y1) = rowcol_to_xy(np.stack([img[:, [row, col]].min(0), img[:, [row, col]].max(0)]))
        if not isinstance(plane, str) and (x1 < 0 or y1 < 0 or x0 > width - 1 or y0 > height - 1):
            plane = OUTSIDE
        x0, x1 = float(np.clip(x0, 0, width - 1)), float(np.clip(x1, 0, width - 1))
        y0, y1 = float(np.clip(y0, 0, height - 1)), float(np.clip(y1, 0, height - 1))
        if not isinstance(plane, str) and (x1 - x0 < 1 or y1 - y0 < 1):
            plane = TINY
        if isinstance(plane, str):
            problems.append(PromptProblem("box", k, plane, _world_of(shapes_layer, verts, world_point)))
        else:
            boxes.append(BoxPrompt(plane, (x0, y0, x1, y1), k))
    return boxes, problems


def clicks_from_points(
    points_layer: Any,
    image_layer: Any,
    world_point: Sequence[float],
    dims_order: Sequence[int],
    positive_feature: str = "positive",
) -> tuple[list[ClickPrompt], list[PromptProblem]]:
    """Every point as a click on its plane, in image pixels; plus problems found.

    Polarity comes from the boolean feature ``positive_feature`` (all positive without it).
    """
    row, col = plane_axes(dims_order, len(world_point), image_layer.ndim)
    shape = spatial_shape(image_layer)
    data = np.asarray(points_layer.data, dtype=float).reshape(-1, points_layer.ndim)
    features = points_layer.features
    if positive_feature in features:
        positive = np.asarray(features[positive_feature], dtype=bool)
    else:
        positive = np.ones(len(data), dtype=bool)
    clicks: list[ClickPrompt] = []
    problems: list[PromptProblem] = []
    if len(data) == 0:
        return clicks, problems
    img = layer_to_image(points_layer, data, image_layer, world_point)
    for k, p in enumerate(img):
        plane = _plane_of(p[None], row, col, shape)
        r, c = p[row], p[col]
        if isinstance(plane, str) or not (-0.5 <= r < shape[row] - 0.5 and -0.5 <= c < shape[col] - 0.5):
            problems.append(PromptProblem("click", k, OUTSIDE, _world_of(points_layer, data[k], world_point)))
            continue
        r, c = np.clip(r, 0, shape[row] - 1), np.clip(c, 0, shape[col] - 1)
        x, y = rowcol_to_xy(np.array([r, c]))
        clicks.append(ClickPrompt(plane, (float(x), float(y)), bool(positive[k]), k))
    return clicks, problems


def _inside(xy: tuple[float, float], box: BoxXYXY) -> bool:
    return box[0] - 0.5 <= xy[0] <= box[2] + 0.5 and box[1] - 0.5 <= xy[1] <= box[3] + 0.5


def _area(box: BoxXYXY) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def group_prompts(boxes: Iterable[BoxPrompt], clicks: Iterable[ClickPrompt]) -> list[ObjectPrompt]:
    """One object per box; a click joins the smallest box around it on its plane.

    Clicks outside every box of their plane form one click-only object for that plane.
    Objects come sorted by plane, boxes in layer order, the click-only object last.
    """
    objects: dict[Plane, list[ObjectPrompt]] = {}
    for b in boxes:
        objects.setdefault(b.plane, []).append(
            ObjectPrompt(b.plane, box_xyxy=b.box_xyxy, box_index=b.source_index)
        )
    members: dict[tuple[Plane, int], list[ClickPrompt]] = {}
    for c in clicks:
        on_plane = objects.setdefault(c.plane, [])
        hosts = [i for i, o in enumerate(on_plane) if o.box_xyxy and _inside(c.xy, o.box_xyxy)]
        if hosts:
            slot = min(hosts, key=lambda i: _area(on_plane[i].box_xyxy))
        else:
            if not on_plane or on_plane[-1].box_xyxy is not None:
                on_plane.append(ObjectPrompt(c.plane))
            slot = len(on_plane) - 1
        members.setdefault((c.plane, slot), []).append(c)
    for (plane, slot), cs in members.items():
        obj = objects[plane][slot]
        obj.points_xy = np.array([c.xy for c in cs], dtype=float)
        obj.point_labels = np.array([int(c.positive) for c in cs], dtype=np.int64)
        obj.point_indices = tuple(c.source_index for c in cs)
    return [obj for plane in sorted(objects) for obj in objects[plane]]
