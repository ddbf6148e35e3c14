"""The offer, once, to open medical files with napari-medsam by default.

napari gives a plugin no way to be the default reader: ``viewer.open("organs.nii.gz")`` without
``plugin=`` fails ("Could not find a backend") and ``viewer.open("organs.seg.nrrd")`` opens a grey
Image without names, unless the user's own preference, napari's ``extension2reader`` setting (what
File > Open's reader dialog and Preferences > Plugins write), names a reader for the file's
pattern. So the widget asks, in a banner at its top (never a dialog that blocks): "Open NIfTI, NRRD,
.seg.nrrd and DICOM with MedSAM by default?" Yes writes that preference for the reader's patterns
(:data:`PATTERNS`, from the one suffix table) and keeps any other reader the user chose for other
patterns; No changes nothing. Either answer is remembered in napari-medsam's settings and the
banner never comes back; nor does it come when the preference already names napari-medsam for
every pattern.
"""

from __future__ import annotations

from qtpy.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton

from napari_medsam._qt.store_setting import settings
from napari_medsam.io.formats import READ_SUFFIXES

PLUGIN = "napari-medsam"
#: The file-name patterns napari's preference maps to this plugin's reader.
PATTERNS = tuple(f"*{suffix}" for suffix in READ_SUFFIXES)
QUESTION = "Open NIfTI, NRRD, .seg.nrrd and DICOM with MedSAM by default?"
WHY = (
    "napari has no reader of its own for these files: without a default, File > Open asks each "
    "time and viewer.open(path) fails (.nii.gz) or opens a plain image without names (.seg.nrrd). "
    "Yes sets napari's preference (Preferences > Plugins), where it can be changed later."
)
#: napari-medsam's setting that holds the answer ("yes" or "no").
ANSWER_KEY = "default_reader_answer"


def is_default() -> bool:
    """Whether napari's preference opens every pattern of :data:`PATTERNS` with napari-medsam."""
    from napari.settings import get_settings

    chosen = get_settings().plugins.extension2reader
    return all(chosen.get(pattern) == PLUGIN for pattern in PATTERNS)


def make_default() -> None:
    """Write napari's preference: :data:`PATTERNS` open with napari-medsam (other entries kept)."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    plugins.extension2reader = {**plugins.extension2reader, **dict.fromkeys(PATTERNS, PLUGIN)}


class ReaderOffer:
    """The banner (``native``): shown when the question was never answered and the preference is
    not set already; Yes and No answer it for good."""

    def __init__(self) -> None:
        self.native = QFrame()
        self.native.setFrameShape(QFrame.Shape.StyledPanel)
        self.native.setToolTip(WHY)
        self.question = QLabel(QUESTION)
        self.question.setWordWrap(True)
        self.yes, self.no = QPushButton("Yes"), QPushButton("No")
        layout = QHBoxLayout(self.native)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(self.question, 1)
        layout.addWidget(self.yes)
        layout.addWidget(self.no)
        self.yes.clicked.connect(lambda: self.answer(True))
        self.no.clicked.connect(lambda: self.answer(False))
        self.native.setVisible(not settings().value(ANSWER_KEY, "") and not is_default())

    def answer(self, yes: bool) -> None:
        """Yes: make napari-medsam napari's reader for :data:`PATTERNS`; either way, never ask again."""
        if yes:
            make_default()
        settings().setValue(ANSWER_KEY, "yes" if yes else "no")
        self.native.setVisible(False)
