"""The one comparison grid (ELQ | LQ proxy | restored | HQ, labelled) of the demo, validation and evaluation."""

import numpy as np
import pytest
from photos import photo
from PIL import Image

from diffusers_irib.grids import GRID_COLUMNS, comparison_grid


def as_uint8(tensor) -> np.ndarray:
    return (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def find_rows(grid: np.ndarray, panel: np.ndarray, x: int) -> list[int]:
    """The y offsets at which ``panel`` appears unchanged in ``grid`` at column x (an independent search)."""
    h, w = panel.shape[:2]
    return [y for y in range(grid.shape[0] - h + 1) if np.array_equal(grid[y : y + h, x : x + w], panel)]


def test_the_layout_is_elq_lq_proxy_restored_hq():
    assert GRID_COLUMNS == ("ELQ input", "LQ proxy", "restored", "HQ (reference)")


def test_small_panels_are_enlarged_to_256_px_keeping_their_pixels_in_labelled_columns():
    names = ("astronaut", "coffee", "chelsea", "rocket")
    rows = [[photo(n, 64) for n in names], [photo(n, 64) for n in reversed(names)]]
    grid = np.asarray(comparison_grid(rows))
    assert grid.shape[1] == 4 * 256  # 64 px panels, enlarged 4 x
    tops = []
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            enlarged = np.kron(as_uint8(panel), np.ones((4, 4, 1), dtype=np.uint8))  # nearest neighbour x4
            found = find_rows(grid, enlarged, j * 256)
            assert len(found) == 1, (i, j)
            tops.append(found[0])
    assert tops[:4] == [tops[0]] * 4 and tops[4:] == [tops[0] + 256] * 4  # image i is row i
    header_end = tops[0]
    assert header_end >= 12  # a label band above the first row
    band = grid[:header_end]
    for j in range(4):  # every column has its label: dark text in its part of the band
        assert (band[:, j * 256 : (j + 1) * 256].min(axis=-1) < 100).any(), j


def test_large_panels_keep_their_size_and_a_missing_panel_is_grey_na():
    hq = photo("astronaut", 300)
    grid = comparison_grid([[hq, None, hq, hq]], labels=["a", "b", "c", "d"])
    assert grid.width == 4 * 300
    array = np.asarray(grid)
    y = find_rows(array, as_uint8(hq), 0)[0]
    missing = array[y : y + 300, 300:600]
    assert (missing == 200).mean() > 0.95 and (missing < 100).any()  # grey, with "n/a" written on it


def test_panels_of_another_size_are_resized_to_the_first_and_captions_and_title_are_drawn():
    grid = comparison_grid(
        [[photo("coffee", 256), photo("coffee", 128), Image.new("RGB", (256, 256), "white"), photo("coffee", 256)]],
        captions=[["PSNR 20.00 dB\nSSIM 0.500", "", "", "the reference"]],
        title="UNTRAINED",
    )
    array = np.asarray(grid)
    assert grid.width == 4 * 256
    assert ((array[..., 0] > 150) & (array[..., 1] < 60)).any()  # the red title
    # caption text under the first panel, in the band below the images
    bottom = find_rows(array, as_uint8(photo("coffee", 256)), 768)[0] + 256
    assert (array[bottom:, :256].min(axis=-1) < 100).any() and grid.height > bottom


@pytest.mark.parametrize(
    "rows, labels, message",
    [
        ([], GRID_COLUMNS, "at least one row"),
        ([[None, None]], ["a", "b"], "not None"),
        ([[photo("coffee", 16)] * 3], GRID_COLUMNS, "needs 4 panels"),
        ([[np.zeros((8, 8))] * 4], GRID_COLUMNS, "must be RGB"),
    ],
)
def test_bad_rows_are_refused_with_one_line(rows, labels, message):
    with pytest.raises(ValueError, match=message):
        comparison_grid(rows, labels)
