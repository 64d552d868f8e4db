"""Loading calibration data: every accepted source and every rejected one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from nirc.errors import CalibrationError
from nirc.quant import CalibrationSet, load_calibration

HAVE_PIL = importlib.util.find_spec("PIL") is not None
IMG = {"image": (1, 3, 8, 8)}


def _check(cal: CalibrationSet, inputs: dict[str, tuple[int, ...]], n: int) -> None:
    assert len(cal.samples) == n
    for sample in cal.samples:
        assert set(sample) == set(inputs)
        for name, shape in inputs.items():
            assert sample[name].shape == shape and sample[name].dtype == np.float32


@pytest.mark.parametrize("with_batch_axis", [False, True])
def test_npy_with_or_without_batch_axis(tmp_path: Path, with_batch_axis: bool) -> None:
    data = np.random.default_rng(0).standard_normal((5, 3, 8, 8))  # float64 on purpose
    stored = data[:, None] if with_batch_axis else data
    path = tmp_path / "calib.npy"
    np.save(path, stored)
    cal = load_calibration(path, IMG)
    _check(cal, IMG, 5)
    assert not cal.synthetic and "calib.npy" in cal.source
    for i, sample in enumerate(cal.samples):
        np.testing.assert_array_equal(sample["image"], data[i : i + 1].astype(np.float32))


def test_count_caps_the_samples_in_file_order(tmp_path: Path) -> None:
    data = np.arange(5 * 3 * 8 * 8, dtype=np.float32).reshape(5, 3, 8, 8)
    path = tmp_path / "calib.npy"
    np.save(path, data)
    cal = load_calibration(path, IMG, count=3)
    _check(cal, IMG, 3)
    np.testing.assert_array_equal(cal.samples[2]["image"][0], data[2])
    assert "first 3 of 5" in cal.source


def test_npz_for_multi_input_models(tmp_path: Path) -> None:
    inputs = {"image": (1, 3, 8, 8), "extra": (1, 10)}
    rng = np.random.default_rng(1)
    image, extra = rng.standard_normal((4, 3, 8, 8)), rng.standard_normal((4, 1, 10)).astype(np.float16)
    path = tmp_path / "multi.npz"
    np.savez(path, image=image, extra=extra, unused=np.zeros(3))
    cal = load_calibration(path, inputs)
    _check(cal, inputs, 4)
    np.testing.assert_array_equal(cal.samples[3]["extra"], extra[3].astype(np.float32))
    np.testing.assert_array_equal(cal.samples[0]["image"][0], image[0].astype(np.float32))


def test_synthetic_is_flagged_deterministic_and_standard_normal() -> None:
    inputs = {"a": (1, 3, 16, 16), "b": (1, 7)}
    cal = load_calibration(None, inputs, count=8, seed=3)
    _check(cal, inputs, 8)
    assert cal.synthetic and "synthetic" in cal.source
    again = load_calibration(None, inputs, count=8, seed=3)
    other = load_calibration(None, inputs, count=8, seed=4)
    for x, y, z in zip(cal.samples, again.samples, other.samples, strict=True):
        np.testing.assert_array_equal(x["a"], y["a"])
        assert not np.array_equal(x["a"], z["a"])
    values = np.concatenate([s["a"].ravel() for s in cal.samples])
    assert abs(values.mean()) < 0.05 and abs(values.std() - 1.0) < 0.05


# --------------------------------------------------------------------------- rejected input


def _npy(tmp_path: Path, name: str, array: np.ndarray) -> Path:
    path = tmp_path / name
    np.save(path, array)
    return path


def test_wrong_shape_names_file_and_both_shapes(tmp_path: Path) -> None:
    path = _npy(tmp_path, "small.npy", np.zeros((5, 3, 4, 4), np.float32))
    with pytest.raises(CalibrationError) as info:
        load_calibration(path, IMG)
    message = str(info.value)
    assert "small.npy" in message and "(N, 3, 8, 8)" in message and "(5, 3, 4, 4)" in message
    assert "\n" not in message


def test_nhwc_data_gets_a_hint(tmp_path: Path) -> None:
    path = _npy(tmp_path, "nhwc.npy", np.zeros((5, 8, 8, 3), np.float32))
    with pytest.raises(CalibrationError, match=r"nhwc\.npy: .*looks NHWC"):
        load_calibration(path, IMG)


def test_integer_dtype_is_rejected(tmp_path: Path) -> None:
    path = _npy(tmp_path, "pixels.npy", np.zeros((5, 3, 8, 8), np.uint8))
    with pytest.raises(CalibrationError, match=r"pixels\.npy: expected float data, got dtype uint8"):
        load_calibration(path, IMG)


def test_npz_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.npz"
    np.savez(path, imagee=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(CalibrationError, match=r"keys\.npz: no array for input 'image'.*imagee"):
        load_calibration(path, IMG)


def test_npz_inputs_with_different_sample_counts(tmp_path: Path) -> None:
    path = tmp_path / "uneven.npz"
    np.savez(path, a=np.zeros((2, 4), np.float32), b=np.zeros((3, 4), np.float32))
    with pytest.raises(CalibrationError, match=r"uneven\.npz: inputs have different sample counts"):
        load_calibration(path, {"a": (1, 4), "b": (1, 4)})


def test_npz_wrong_shape_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "shape.npz"
    np.savez(path, image=np.zeros((2, 3, 9, 9), np.float32))
    with pytest.raises(CalibrationError, match=r"shape\.npz\['image'\]: expected .*\(2, 3, 9, 9\)"):
        load_calibration(path, IMG)


def test_npy_for_a_multi_input_model(tmp_path: Path) -> None:
    path = _npy(tmp_path, "one.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(CalibrationError, match=r"one\.npy: .*use an \.npz"):
        load_calibration(path, {"a": (1, 4), "b": (1, 4)})


def test_empty_and_non_finite_arrays(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"empty\.npy: holds no samples"):
        load_calibration(_npy(tmp_path, "empty.npy", np.zeros((0, 3, 8, 8), np.float32)), IMG)
    bad = np.zeros((2, 3, 8, 8), np.float32)
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationError, match=r"nan\.npy: sample 1 contains NaN"):
        load_calibration(_npy(tmp_path, "nan.npy", bad), IMG)


def test_unreadable_npy(tmp_path: Path) -> None:
    path = tmp_path / "broken.npy"
    path.write_bytes(b"not numpy at all")
    with pytest.raises(CalibrationError, match=r"broken\.npy: not an \.npy file"):
        load_calibration(path, IMG)


def test_unknown_extension_and_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(CalibrationError, match=r"data\.csv: unknown calibration data format '\.csv'"):
        load_calibration(path, IMG)
    with pytest.raises(CalibrationError, match=r"absent\.npy: calibration data not found"):
        load_calibration(tmp_path / "absent.npy", IMG)


def test_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "no_images"
    folder.mkdir()
    (folder / "README.txt").write_text("nothing here")
    with pytest.raises(CalibrationError, match=r"no_images: no bmp/jpeg/jpg/png images"):
        load_calibration(folder, IMG)


def test_input_shapes_calibration_cannot_serve() -> None:
    with pytest.raises(CalibrationError, match=r"'x': .*needs batch 1, got shape \(4, 3, 8, 8\)"):
        load_calibration(None, {"x": (4, 3, 8, 8)})
    with pytest.raises(CalibrationError, match=r"'x': calibration needs a static shape"):
        load_calibration(None, {"x": (1, 0, 8)})
    with pytest.raises(CalibrationError, match="at least 1"):
        load_calibration(None, IMG, count=0)


# --------------------------------------------------------------------------- image folders


@pytest.mark.skipif(HAVE_PIL, reason="Pillow is installed")
def test_folder_without_pillow_says_to_install_it(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(CalibrationError, match=r"imgs: reading an image folder needs Pillow.*pip install pillow"):
        load_calibration(folder, IMG)


@pytest.mark.skipif(not HAVE_PIL, reason="Pillow is not installed")
def test_folder_of_images_sorted_resized_normalised(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    colours = {"b.png": (10, 200, 30), "a.png": (255, 0, 128), "c.bmp": (0, 64, 255)}
    for i, (name, colour) in enumerate(colours.items()):
        Image.new("RGB", (20 + 7 * i, 13 + 5 * i), colour).save(folder / name)
    (folder / "notes.txt").write_text("ignored")
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.5, 2.0)
    cal = load_calibration(folder, IMG, mean=mean, std=std)
    _check(cal, IMG, 3)
    assert not cal.synthetic and "imgs" in cal.source
    for sample, name in zip(cal.samples, ["a.png", "b.png", "c.bmp"], strict=True):
        expected = (np.array(colours[name], np.float32) / 255 - np.array(mean, np.float32)) / np.array(std, np.float32)
        # A solid colour survives bilinear resizing exactly, whatever the source size.
        np.testing.assert_allclose(sample["image"][0], np.broadcast_to(expected[:, None, None], (3, 8, 8)), rtol=1e-6)


@pytest.mark.skipif(not HAVE_PIL, reason="Pillow is not installed")
def test_folder_resize_is_bilinear_and_deterministic(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "grad"
    folder.mkdir()
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (16, 1))
    Image.fromarray(ramp, mode="L").save(folder / "ramp.png")
    gray = {"x": (1, 1, 4, 8)}
    first = load_calibration(folder, gray)
    second = load_calibration(folder, gray)
    np.testing.assert_array_equal(first.samples[0]["x"], second.samples[0]["x"])
    row = first.samples[0]["x"][0, 0, 0]
    assert np.all(np.diff(row) > 0) and row.min() >= 0.0 and row.max() <= 1.0  # a ramp stays a ramp


@pytest.mark.skipif(not HAVE_PIL, reason="Pillow is not installed")
def test_folder_with_a_broken_image(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "bad.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(CalibrationError, match=r"bad\.jpg: not a readable image"):
        load_calibration(folder, IMG)


def test_folder_needs_an_image_shaped_single_input(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    with pytest.raises(CalibrationError, match=r"imgs: an image folder can only feed a single-input model"):
        load_calibration(folder, {"a": (1, 3, 8, 8), "b": (1, 3, 8, 8)})
    with pytest.raises(CalibrationError, match=r"imgs: an image folder feeds an NCHW input with 1 or 3 channels"):
        load_calibration(folder, {"a": (1, 4, 8, 8)})
