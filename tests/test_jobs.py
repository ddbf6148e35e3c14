"""Which errors a user can fix (their message is shown) and which are bugs (logged, "internal error")."""

from __future__ import annotations

from napari_medsam.base.errors import ModelLoadError
from napari_medsam.base.jobs import user_message


def test_out_of_memory_tells_the_user_what_to_change():
    message = user_message(
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    )
    assert "smaller model" in message
    assert "CPU" in message
    assert "fewer slices" in message
    assert user_message(MemoryError()) is not None
    assert user_message(RuntimeError("shape mismatch")) is None  # a bug, not the user's to fix
    assert user_message(ValueError("Draw a box first.")) == "Draw a box first."


def test_model_load_errors_and_missing_files_are_the_users_to_fix():
    assert user_message(ModelLoadError("offline: use lite-medsam")) == "offline: use lite-medsam"
    assert user_message(FileNotFoundError("no such file: ct.nii.gz")) == "no such file: ct.nii.gz"
    assert user_message(TypeError("'NoneType' object is not subscriptable")) is None
