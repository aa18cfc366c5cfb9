"""llmga.sd.canvas: outpainting canvases and pasting generated pixels back onto the original."""

from __future__ import annotations

import pytest
import torch

from llmga.images import as_mask_batch
from llmga.sd.canvas import outpaint_canvas, paste_back, paste_back_notes


def random_image(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((batch, height, width, 3), generator=torch.Generator().manual_seed(seed))


def test_odd_sizes_grow_to_multiples_of_8_on_the_right_and_bottom():
    image = random_image(2, 77, 101)
    canvas, mask = outpaint_canvas(image, left=13, top=0, right=29, bottom=5)
    # 101 + 13 + 29 = 143 -> 144 (right 30); 77 + 0 + 5 = 82 -> 88 (bottom 11)
    assert canvas.shape == (2, 88, 144, 3) and mask.shape == (2, 88, 144)
    assert torch.equal(canvas[:, 0:77, 13:114], image)
    assert torch.equal(mask[:, 0:77, 13:114], torch.zeros(2, 77, 101))
    new_area = torch.ones(88, 144, dtype=torch.bool)
    new_area[0:77, 13:114] = False
    assert (canvas[:, new_area] == 0.5).all() and (mask[:, new_area] == 1).all()


def test_rounding_joins_the_only_padded_side_before_the_image():
    canvas, mask = outpaint_canvas(random_image(1, 77, 101), left=13, top=5, right=0, bottom=0)
    assert canvas.shape == (1, 88, 120, 3)
    # the 6 extra columns and 6 extra rows went left and top: the right and bottom edges stay untouched
    assert torch.equal(mask[0, 11:, 19:], torch.zeros(77, 101))


def test_zero_padding_keeps_the_image_and_masks_nothing():
    image = random_image(1, 64, 96)
    canvas, mask = outpaint_canvas(image, 0, 0, 0, 0, feathering=10)
    assert torch.equal(canvas, image) and torch.equal(mask, torch.zeros(1, 64, 96))


def test_zero_padding_rounds_up_an_odd_size_on_the_right_and_bottom():
    image = random_image(1, 60, 99)
    canvas, mask = outpaint_canvas(image, 0, 0, 0, 0)
    assert canvas.shape == (1, 64, 104, 3)
    assert torch.equal(canvas[:, :60, :99], image) and mask[0, :60, :99].eq(0).all()
    assert mask[0, 60:].eq(1).all() and mask[0, :, 99:].eq(1).all()


def test_multiple_1_turns_rounding_off_and_fill_sets_the_new_value():
    canvas, _ = outpaint_canvas(random_image(1, 7, 9), 1, 2, 3, 4, multiple=1, fill=0.0)
    assert canvas.shape == (1, 13, 13, 3) and canvas[0, 0].eq(0).all()


@pytest.mark.parametrize("side", ["left", "top", "right", "bottom", "feathering"])
def test_negative_values_are_refused_with_advice(side):
    values = dict(left=8, top=8, right=8, bottom=8, feathering=0) | {side: -8}
    with pytest.raises(ValueError, match=f"{side} is -8 but must be 0 or more pixels"):
        outpaint_canvas(random_image(1, 16, 16), **values)


def test_feathering_ramps_monotonically_into_the_original_and_stays_below_1():
    canvas, mask = outpaint_canvas(random_image(1, 64, 64), left=16, top=0, right=0, bottom=0, feathering=6)
    row = mask[0, 32, 16:]  # the original's columns, seam on the left
    ramp = row[:6]
    assert (ramp > 0).all() and (ramp < 1).all()
    assert (ramp[1:] < ramp[:-1]).all()
    assert row[6:].eq(0).all()
    assert torch.allclose(ramp, torch.tensor([(7 - d) / 7 for d in range(1, 7)]) ** 2)
    assert mask[0, :, :16].eq(1).all()  # the new area keeps 1
    assert torch.equal(mask[0, 0, 16:], row)  # the unpadded top edge gets no ramp of its own


def test_feathering_follows_the_nearest_padded_side_in_corners():
    _, mask = outpaint_canvas(random_image(1, 32, 32), 8, 8, 0, 0, feathering=4)
    original = mask[0, 8:, 8:]
    assert original[0, 0] == original[0, 3] == original[3, 0] == pytest.approx((4 / 5) ** 2)
    assert original[2, 3] == pytest.approx((2 / 5) ** 2)
    assert original[4:, 4:].eq(0).all()


def test_paste_back_keeps_unmasked_pixels_bit_identical():
    original, generated = random_image(1, 40, 56, seed=1), random_image(1, 40, 56, seed=2)
    mask = torch.zeros(40, 56)
    mask[10:30, 12:40] = 1
    for feathering in (0, 5):
        result = paste_back(original, generated, mask, feathering=feathering)
        assert torch.equal(result[:, mask == 0], original[:, mask == 0])
    result = paste_back(original, generated, mask)
    assert torch.equal(result[:, mask == 1], generated[:, mask == 1])


def test_paste_back_feathers_inside_the_mask_only():
    original, generated = torch.zeros(1, 32, 32, 3), torch.ones(1, 32, 32, 3)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1
    result = paste_back(original, generated, mask, feathering=3)[0, 16, :, 0]
    assert result[:8].eq(0).all()
    assert torch.allclose(result[8:12], torch.tensor([1 / 4, 2 / 4, 3 / 4, 1]))
    assert result[11:21].eq(1).all()  # deeper than the band: the generated pixel bit for bit
    assert torch.allclose(result[20:24], torch.tensor([1, 3 / 4, 2 / 4, 1 / 4]))
    assert result[24:].eq(0).all()


def test_paste_back_blends_by_fractional_mask_values():
    original, generated = torch.zeros(1, 2, 2, 3), torch.ones(1, 2, 2, 3)
    mask = torch.tensor([[0.0, 0.25], [0.5, 1.0]])
    result = paste_back(original, generated, mask)[0, ..., 0]
    assert torch.equal(result, mask)


def test_paste_back_refuses_a_generated_image_of_another_size():
    with pytest.raises(ValueError, match="the generated image is 512x512 but the original is 640x480: decode at the "
                       "original size"):
        paste_back(torch.zeros(1, 480, 640, 3), torch.zeros(1, 512, 512, 3), torch.zeros(480, 640))


def test_paste_back_refuses_a_mask_of_another_size():
    with pytest.raises(ValueError, match="the mask is 64x32 but the original image is 48x40"):
        paste_back(torch.zeros(1, 40, 48, 3), torch.zeros(1, 40, 48, 3), torch.zeros(1, 32, 64))


def test_paste_back_refuses_a_3d_image_or_a_4d_mask():
    with pytest.raises(ValueError, match=r"original image must be \[B, H, W, C\]"):
        paste_back(torch.zeros(8, 8, 3), torch.zeros(1, 8, 8, 3), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="pass a MASK, not an IMAGE"):
        as_mask_batch(torch.zeros(1, 8, 8, 3))


def test_paste_back_broadcasts_one_original_and_one_mask_over_generated_batch():
    original = random_image(1, 16, 24, seed=1)
    generated = random_image(3, 16, 24, seed=2)
    mask = torch.zeros(1, 16, 24)
    mask[:, 4:12, 4:20] = 1
    result = paste_back(original, generated, mask, feathering=2)
    assert result.shape == (3, 16, 24, 3)
    for index in range(3):
        assert torch.equal(result[index], paste_back(original, generated[index:index + 1], mask, feathering=2)[0])
        assert torch.equal(result[index][mask[0] == 0], original[0][mask[0] == 0])


def test_paste_back_takes_one_mask_per_image():
    original, generated = random_image(2, 8, 8, seed=1), random_image(2, 8, 8, seed=2)
    mask = torch.stack([torch.zeros(8, 8), torch.ones(8, 8)])
    result = paste_back(original, generated, mask)
    assert torch.equal(result[0], original[0]) and torch.equal(result[1], generated[1])


def test_paste_back_refuses_unmatched_batches():
    with pytest.raises(ValueError, match="batch sizes differ .*original 2, generated 3"):
        paste_back(torch.zeros(2, 8, 8, 3), torch.zeros(3, 8, 8, 3), torch.zeros(8, 8))


def test_paste_back_notes_say_when_the_mask_changes_nothing_or_keeps_nothing():
    """An all-0 mask returns the original and an all-1 mask the generated image: both are said; a partial or
    fractional mask is not."""
    original, generated = random_image(1, 8, 8, seed=1), random_image(1, 8, 8, seed=2)
    empty, full, partial = torch.zeros(8, 8), torch.ones(8, 8), torch.zeros(8, 8)
    partial[2:4, 2:4] = 1
    assert torch.equal(paste_back(original, generated, empty, feathering=2), original)
    assert torch.equal(paste_back(original, generated, full, feathering=2), generated)
    assert paste_back_notes(empty) == ["the mask is all 0: the output is the original, the generated image is not "
                                       "used"]
    assert paste_back_notes(full) == ["the mask is all 1: the output is the generated image, nothing of the "
                                      "original is kept"]
    assert paste_back_notes(partial) == [] and paste_back_notes(torch.full((8, 8), 0.5)) == []
    assert paste_back_notes(torch.stack([partial, empty, empty, full])) == [
        "masks 2, 3 of 4 are all 0: the output is the original, the generated image is not used",
        "mask 4 of 4 is all 1: the output is the generated image, nothing of the original is kept"]


def test_outpaint_canvas_then_paste_back_restores_the_original_region():
    image = random_image(1, 77, 101)
    canvas, mask = outpaint_canvas(image, 13, 0, 29, 5, feathering=4)
    generated = random_image(1, *canvas.shape[1:3], seed=3)
    result = paste_back(canvas, generated, mask)
    assert torch.equal(result[:, 0:73, 17:110], image[:, 0:73, 4:97])  # beyond the 4-pixel ramp
    assert torch.equal(result[:, 77:], generated[:, 77:])
