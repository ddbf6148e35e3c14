"""MedSamPredictor: encode a slice once, then turn box and click prompts into masks.

Qt-free and napari-free. Mirrors segment-anything's ``SamPredictor`` (``set_image``, ``predict``,
``reset_image``) with each model family's own pre- and post-processing and an embedding cache.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from napari_medsam.base.boxes import check_box
from napari_medsam.base.pixels import check_image
from napari_medsam.base.preemption import in_background, preemptible, preemption_point
from napari_medsam.base.windows import check_window
from napari_medsam.base.zoom import Window, crop_window, reusable, zoom_applies
from napari_medsam.engine.cache import EmbeddingCache, EmbeddingKey, data_signature
from napari_medsam.models.preprocessing import (
    PREPROCESSING_VERSION,
    InputGeometry,
    masks_from_logits,
    model_input,
    scale_box,
    scale_points,
    to_rgb_uint8,
)

if TYPE_CHECKING:
    import os

    import torch

    from napari_medsam.engine.store import EmbeddingStore
    from napari_medsam.models import LoadedModel
    from napari_medsam.models.families import Family

logger = logging.getLogger(__name__)

LOW_RES_SIZE = 256


@runtime_checkable
class SlicePredictor(Protocol):
    """What propagation, prefetching, the widget and the CLI ask of a predictor.

    :class:`MedSamPredictor` is the one implementation; the tests' stand-ins (``tests/fakes.py``)
    implement the same members, so that no caller ever asks what it talks to.

    - ``family``: the model family (:func:`~napari_medsam.models.families.family_spec`).
    - ``store``: the embedding store read through after memory (None: none); a predictor without
      an encoder may ignore it.
    - ``set_image`` makes a slice current; ``predict`` gives a :class:`Prediction` for prompts on
      it; ``coverage`` and ``cells`` describe it on the embedding's 64 x 64 grid.
    - ``precompute`` fills the cache for a slice without making it current and says whether an
      encoder ran; it is thread-safe and leaves the current slice alone (``Lookahead`` and the
      background ``Prefetcher`` call it from their threads).
    """

    family: str
    store: Any

    def set_image(self, image: np.ndarray, window: Sequence[float] | None = None) -> None: ...

    def predict(
        self,
        box: Any = None,
        points: Any = None,
        point_labels: Any = None,
        mask_input: Any = None,
        multimask: bool = False,
        zoom: bool | None = None,
    ) -> Prediction: ...

    def precompute(self, image: np.ndarray, window: Sequence[float] | None = None) -> bool: ...

    def coverage(self, mask: np.ndarray) -> np.ndarray: ...

    def cells(self) -> np.ndarray: ...


def cell_coverage(mask: np.ndarray, geometry: InputGeometry, cells: int) -> np.ndarray:
    """The fraction of each of the ``cells`` x ``cells`` embedding cells that ``mask`` (the image's
    (H, W)) covers, in 0..1, in the model input's placement of the image (``geometry``: resized,
    padded), so cells of the padding are 0 and a mask smaller than a cell covers a fraction of one."""
    import torch
    import torch.nn.functional as F

    area = np.asarray(mask, dtype=np.float32)
    if area.shape != geometry.original:
        raise ValueError(f"mask has shape {area.shape}, the image {geometry.original}")
    (new_h, new_w), size = geometry.resized, geometry.input_size
    resized = F.interpolate(torch.from_numpy(area)[None, None], size=(new_h, new_w), mode="area")
    padded = F.pad(resized, (0, size - new_w, 0, size - new_h))
    return F.avg_pool2d(padded, size // cells)[0, 0].numpy()


@dataclass(frozen=True)
class Prediction:
    """One object's mask at the image's resolution, its predicted IoU and its low-resolution logits.

    ``crop`` is the slice window (row0, col0, row1, col1) a zoomed prediction ran on (its logits are
    that crop's); None for the whole slice."""

    mask: np.ndarray
    score: float
    logits: np.ndarray
    crop: Window | None = None


class MedSamPredictor:
    """Segment one 2D slice at a time with MedSAM, SAM or LiteMedSAM.

    Embeddings are cached (as float16, on the CPU) under a signature of the slice's data, the
    intensity window, the model's weights, family and dtype, and the preprocessing, so revisiting
    a slice costs no encoder work. With a ``store`` (an :class:`~napari_medsam.engine.store.
    EmbeddingStore` or its path) lookups go to memory, then the store, then the encoder, and new
    embeddings are written to the store. All methods are thread-safe.

    The encoder runs one slice at a time. A run inside ``base.preemption.preemptible`` (a
    background thread's :meth:`precompute`) gives way: when another caller needs the encoder, it
    stops at the encoder's next preemption point (raising ``Preempted``), so the other caller's
    encoding starts at once.
    """

    def __init__(
        self,
        model: LoadedModel,
        cache: EmbeddingCache | None = None,
        store: EmbeddingStore | str | os.PathLike[str] | None = None,
    ) -> None:
        self.model = model
        self.cache = cache if cache is not None else EmbeddingCache()
        self.store = store
        self._lock = threading.RLock()
        self._encode_lock = threading.Lock()
        self._demand = threading.Condition()
        self._waiting = 0  # callers (not in the background) waiting for the encoder
        self._embedding: torch.Tensor | None = None
        self._geometry: InputGeometry | None = None
        self._image: np.ndarray = np.zeros((0, 0))
        self._window: tuple[float, float] | None = None
        self._crops: list[Window] = []  # crop windows encoded for the current slice
        self._cells: tuple[torch.Tensor, np.ndarray] | None = None  # the current embedding's cells()

    @classmethod
    def from_pretrained(
        cls,
        source: str = "lite-medsam",
        device: str = "auto",
        dtype: str = "auto",
        family: Family | None = None,
        cache: EmbeddingCache | None = None,
        store: EmbeddingStore | str | os.PathLike[str] | None = None,
        backend: str = "auto",
    ) -> MedSamPredictor:
        """Load (or reuse) a model: an alias, a hub id, a Hugging Face folder or a ``.pth`` file.

        ``store`` (a path or an ``EmbeddingStore``) reads and writes embeddings through a disk store.
        ``backend`` runs the image encoder: ``"torch"``, ``"onnxruntime"`` (the ``[onnx]`` extra) or
        ``"auto"`` (the default; see :func:`~napari_medsam.models.loading.load_model`).
        """
        from napari_medsam.models.loading import load_model

        model = load_model(source, device=device, dtype=dtype, family=family, backend=backend)
        return cls(model, cache=cache, store=store)

    @property
    def store(self) -> EmbeddingStore | None:
        """The embedding store read through after the memory cache (None: none)."""
        return self._store

    @store.setter
    def store(self, store: EmbeddingStore | str | os.PathLike[str] | None) -> None:
        from napari_medsam.engine.store import EmbeddingStore

        self._store = store if store is None or isinstance(store, EmbeddingStore) else EmbeddingStore(store)

    @property
    def family(self) -> Family:
        """The model family, which decides pre- and post-processing."""
        return self.model.family

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(H, W) of the current image, or None before ``set_image``."""
        return None if self._geometry is None else self._geometry.original

    @property
    def is_image_set(self) -> bool:
        """Whether ``predict`` can run."""
        return self._geometry is not None

    def _key(self, image: np.ndarray, window: tuple[float, float] | None) -> EmbeddingKey:
        return EmbeddingKey(self.model.identity, data_signature(image), window, PREPROCESSING_VERSION)

    def _embedding_for(self, image: object, window: object) -> tuple[torch.Tensor, InputGeometry, bool]:
        """The cached or freshly computed (embedding, geometry, encoded) of a slice."""
        import torch

        array, limits = check_image(image), check_window(window)
        key = self._key(array, limits)
        entry = self.cache.get(key)
        if entry is None:
            # One encoder run at a time; a second caller for the same slice then finds it cached.
            with self._encoder_turn():
                store = self.store
                entry = self.cache.get(key) or (None if store is None else store.get(key))
                if entry is None:
                    pixels, geometry = model_input(to_rgb_uint8(array, limits), self.family)
                    with torch.inference_mode():
                        batch = torch.from_numpy(pixels)[None].to(self.model.device, self.model.dtype)
                        embedding = self.model.encoder(batch)
                    # Stored and used as float16 whether or not the cache keeps it, so a
                    # cache or store hit gives exactly the masks of the first run.
                    embedding = embedding.to("cpu", torch.float16)
                    self.cache.put(key, embedding, geometry)
                    if store is not None:
                        _write_through(store, key, embedding, geometry, self.model)
                    return embedding, geometry, True
                self.cache.put(key, *entry)
        return entry[0], entry[1], False

    @contextlib.contextmanager
    def _encoder_turn(self) -> Iterator[None]:
        """Hold the encoder; a background run inside gives way to any other caller that waits for it."""
        if in_background():
            with self._demand:  # let waiting callers go first; an interrupt also ends the wait
                while not self._demand.wait_for(lambda: self._waiting == 0, timeout=0.05):
                    preemption_point()
            with self._encode_lock, preemptible(lambda: self._waiting > 0):
                preemption_point()
                yield
            return
        with self._demand:
            self._waiting += 1
        try:
            self._encode_lock.acquire()
        finally:
            with self._demand:
                self._waiting -= 1
                self._demand.notify_all()
        try:
            yield
        finally:
            self._encode_lock.release()

    def set_image(self, image: np.ndarray, window: Sequence[float] | None = None) -> None:
        """Encode ``image`` (2D, or RGB (H, W, 3)) for the following ``predict`` calls.

        ``window=(low, high)`` clips and scales intensities to 0..255 first (e.g. CT soft tissue
        ``(-160, 240)``); ``None`` uses the slice's own min..max.
        """
        embedding, geometry, _ = self._embedding_for(image, window)
        with self._lock:
            self._embedding = embedding.to(self.model.device, self.model.dtype)
            self._geometry = geometry
            self._image, self._window = check_image(image), check_window(window)
            self._crops: list[Window] = []

    def precompute(self, image: np.ndarray, window: Sequence[float] | None = None) -> bool:
        """Fill the cache for a slice without making it current; True if the encoder ran.

        Inside ``base.preemption.preemptible`` the run may stop with ``Preempted`` (see the class).
        """
        return self._embedding_for(image, window)[2]

    def is_cached(self, image: np.ndarray, window: Sequence[float] | None = None) -> bool:
        """Whether ``set_image(image, window)`` would reuse an embedding (memory or store)."""
        key = self._key(check_image(image), check_window(window))
        return key in self.cache or (self.store is not None and key in self.store)

    def coverage(self, mask: np.ndarray) -> np.ndarray:
        """The fraction of each embedding cell (64 x 64) that ``mask`` (H, W) covers, in 0..1.

        In the model input's placement of the current slice (resized, padded), so cells of the
        padding are 0 and a mask smaller than a cell still covers a fraction of one.
        """
        embedding, geometry = self._current("coverage")
        return cell_coverage(mask, geometry, embedding.shape[-1])

    def cells(self) -> np.ndarray:
        """The current slice's embedding as one float32 vector per cell: (64, 64, 256), read-only."""
        embedding, _ = self._current("cells")
        with self._lock:
            if self._cells is None or self._cells[0] is not embedding:
                array = np.ascontiguousarray(embedding[0].float().cpu().numpy().transpose(1, 2, 0))
                array.flags.writeable = False
                self._cells = (embedding, array)
            return self._cells[1]

    def _current(self, verb: str) -> tuple[torch.Tensor, InputGeometry]:
        with self._lock:
            if self._embedding is None or self._geometry is None:
                raise RuntimeError(f"no image set: call set_image(image) before {verb}()")
            return self._embedding, self._geometry

    def reset_image(self) -> None:
        """Forget the current image (cached embeddings stay in the cache)."""
        with self._lock:
            self._embedding = None
            self._geometry = None
            self._image, self._window = np.zeros((0, 0)), None

    def predict(
        self,
        box: Sequence[float] | np.ndarray | None = None,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        point_labels: Sequence[int] | np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = False,
        zoom: bool | None = None,
    ) -> Prediction:
        """Segment one object on the current image.

        ``box`` is (x0, y0, x1, y1) and ``points`` (N, 2) as (x, y), in pixels of the image (x is
        the column); ``point_labels`` (N,) are 1 for foreground and 0 for background (default all 1).
        ``mask_input`` is a previous ``Prediction.logits``. With ``multimask`` the decoder proposes
        three masks and the one with the highest predicted IoU is returned.

        ``zoom`` (:mod:`~napari_medsam.base.zoom`): None (the default) also segments a square crop
        around a box that is small for a slice the model sees downscaled, encoded and cached like
        any slice, and keeps the crop's mask where the model's predicted IoU ranks it at least as
        high as the whole slice's; True always uses the crop (where one fits inside the slice);
        False never (the official whole-slice procedure). No crop with ``mask_input`` (its logits
        are the whole slice's) or with a click outside the crop. ``Prediction.crop`` says which won.
        """
        with self._lock:
            embedding, geometry = self._current("predict")
            image, window = self._image, self._window
        height, width = geometry.original
        box_xyxy = None if box is None else check_box(box, width, height)
        points_xy, labels = check_points(points, point_labels, width, height)
        if box_xyxy is None and points_xy is None:
            raise ValueError("no prompt given: pass a box (x0, y0, x1, y1) and/or points")
        whole = None
        crop = self._crop_for(box_xyxy, points_xy, mask_input, geometry, zoom)
        if crop is None or zoom is None:
            low_res, score = self._decode(
                embedding, geometry, box_xyxy, points_xy, labels, mask_input, multimask
            )
            mask = masks_from_logits(low_res[None], geometry)[0].cpu().numpy()
            whole = Prediction(mask=mask, score=score, logits=low_res.cpu().numpy().astype(np.float32))
            if crop is None:
                return whole
        row0, col0, row1, col1 = crop
        limits = window if window is not None or image.dtype == np.uint8 else _own_limits(image)
        zoomed, zoomed_geometry, _ = self._embedding_for(image[row0:row1, col0:col1], limits)
        zoomed = zoomed.to(self.model.device, self.model.dtype)
        shift = np.array([col0, row0], dtype=np.float64)
        low_res, score = self._decode(
            zoomed, zoomed_geometry, None if box_xyxy is None else box_xyxy - np.tile(shift, 2),
            None if points_xy is None else points_xy - shift, labels, None, multimask,
        )  # fmt: skip
        if whole is not None and score < whole.score:
            return whole
        mask = np.zeros(geometry.original, dtype=bool)
        mask[row0:row1, col0:col1] = masks_from_logits(low_res[None], zoomed_geometry)[0].cpu().numpy()
        return Prediction(mask=mask, score=score, logits=low_res.cpu().numpy().astype(np.float32), crop=crop)

    def _crop_for(
        self,
        box_xyxy: np.ndarray | None,
        points_xy: np.ndarray | None,
        mask_input: np.ndarray | None,
        geometry: InputGeometry,
        zoom: bool | None,
    ) -> Window | None:
        """The crop a prediction also runs on (None: the whole slice only); one already encoded for
        this slice is reused where it serves the box (:func:`~napari_medsam.base.zoom.reusable`)."""
        if box_xyxy is None or mask_input is not None or zoom is False:
            return None
        if zoom is None and not zoom_applies(box_xyxy, geometry.original, geometry.input_size):
            return None
        with self._lock:
            crop = next((c for c in self._crops if reusable(c, box_xyxy)), None)
            if crop is None:
                crop = crop_window(box_xyxy, geometry.original)
                if crop is not None:
                    self._crops.append(crop)
        if crop is not None and points_xy is not None and not _inside(points_xy, crop):
            return None
        return crop

    def _decode(
        self,
        embedding: torch.Tensor,
        geometry: InputGeometry,
        box_xyxy: np.ndarray | None,
        points_xy: np.ndarray | None,
        labels: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, float]:
        """The low-resolution logits (256, 256) of the best mask and its predicted IoU."""
        import torch

        from napari_medsam.models.fast_decoder import decode

        device, dtype = self.model.device, self.model.dtype
        inputs: dict[str, torch.Tensor] = {}
        if box_xyxy is not None:
            inputs["input_boxes"] = torch.tensor(
                scale_box(box_xyxy, geometry)[None, None], dtype=dtype, device=device
            )
        if points_xy is not None:
            inputs["input_points"] = torch.tensor(
                scale_points(points_xy, geometry)[None, None], dtype=dtype, device=device
            )
            inputs["input_labels"] = torch.tensor(labels[None, None], dtype=torch.long, device=device)
        if mask_input is not None:
            inputs["input_masks"] = torch.tensor(
                check_mask_input(mask_input)[None, None], dtype=dtype, device=device
            )
        # SamModel's prompt encoder + mask decoder, without per-prompt repeats (fast_decoder)
        pred_masks, iou_scores = decode(self.model.sam, embedding, multimask_output=multimask, **inputs)
        low_res, scores = pred_masks[0, 0].float(), iou_scores[0, 0].float()
        best = int(torch.argmax(scores)) if multimask else 0
        return low_res[best], float(scores[best])


def _inside(points_xy: np.ndarray, crop: Window) -> bool:
    row0, col0, row1, col1 = crop
    x, y = points_xy[:, 0], points_xy[:, 1]
    return bool(np.all((x >= col0) & (x <= col1 - 1) & (y >= row0) & (y <= row1 - 1)))


def _own_limits(image: np.ndarray) -> tuple[float, float] | None:
    """The whole slice's min..max, so a crop is scaled as the slice is (None: a constant slice)."""
    low, high = float(np.min(image)), float(np.max(image))
    return (low, high) if high > low else None


def _write_through(
    store: EmbeddingStore,
    key: EmbeddingKey,
    embedding: torch.Tensor,
    geometry: InputGeometry,
    model: LoadedModel,
) -> None:
    """Write a new embedding to the store; a store that cannot be written is logged, not fatal."""
    try:
        store.put(key, embedding, geometry, model)
    except OSError as error:
        logger.warning("could not write the embedding to %s: %s", store.path, error)


def check_points(
    points: object, labels: object, width: int, height: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Validate (N, 2) (x, y) points and their 0/1 labels; None, None when there are no points."""
    if points is None:
        if labels is not None:
            raise ValueError("point_labels given without points")
        return None, None
    try:
        coords = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"points must be an (N, 2) array of (x, y), got {points!r}") from err
    if coords.ndim == 1 and coords.shape == (2,):
        coords = coords[None]
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
        raise ValueError(f"points must be an (N, 2) array of (x, y) with N >= 1, got shape {coords.shape}")
    if not np.isfinite(coords).all():
        raise ValueError("points contain NaN or infinite values")
    outside = (
        (coords[:, 0] < -0.5)
        | (coords[:, 0] > width - 0.5)
        | (coords[:, 1] < -0.5)
        | (coords[:, 1] > height - 0.5)
    )
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} point(s) lie outside the image (width {width}, height {height}): "
            f"{coords[outside].tolist()}"
        )
    if labels is None:
        return coords, np.ones(len(coords), dtype=np.int64)
    values = np.asarray(labels).reshape(-1) if np.ndim(labels) else np.asarray([labels])
    if len(values) != len(coords):
        raise ValueError(f"got {len(coords)} points but {len(values)} point_labels")
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"point_labels must be 1 (foreground) or 0 (background), got {values.tolist()}")
    return coords, values.astype(np.int64)


def check_mask_input(mask_input: object) -> np.ndarray:
    """Validate previous low-resolution logits: (256, 256), finite."""
    array = np.asarray(mask_input, dtype=np.float32)
    array = array.reshape(array.shape[-2:]) if array.ndim > 2 and array.size == LOW_RES_SIZE**2 else array
    if array.shape != (LOW_RES_SIZE, LOW_RES_SIZE):
        raise ValueError(
            f"mask_input must be the (256, 256) logits of a previous prediction, got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError("mask_input contains NaN or infinite values")
    return array
