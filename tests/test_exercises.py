"""Every exercise's checker accepts its solution and rejects a plausible wrong answer, and stubs say "not yet"."""

from __future__ import annotations

import math

import pytest
import torch


from fpnbook import exercises, solutions


def area_plus_one(b):  # the old VOC convention: both end pixels counted
    return (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)


def levels_rounded(b, k_min, k_max, s0, k0):  # round instead of floor
    side = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sqrt()
    return torch.round(k0 + torch.log2(side / s0)).clamp(k_min, k_max).long() - k_min


def focal_from_log_sigmoid(x, t, alpha, gamma):  # log(sigmoid(x)) is -inf for very negative x
    p = torch.sigmoid(x)
    pt = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return -alpha_t * (1 - pt) ** gamma * torch.log(pt)


def nearest_pixel(values, y, x):  # rounds to the nearest pixel instead of interpolating
    h, w = values.shape[-2:]
    if y < -1 or y > h or x < -1 or x > w:
        return values.new_zeros(values.shape[0])
    return values[:, min(max(round(y), 0), h - 1), min(max(round(x), 0), w - 1)]


def one_sample_per_bin(input, rois, size, scale, ratio):  # ignores sampling_ratio: the bin centre only
    return solutions.roi_align(input, rois, size, scale, 1)


def mask_cut_by_gt_box(gt_mask, gt_box, roi, size):  # the object's box cuts the mask, not the RoI
    return solutions.mask_target(gt_mask, roi, gt_box, size)


def to_coco_xyxy(output, image_id, label_to_cat_id):  # forgets COCO's [x, y, w, h]
    return [{"image_id": image_id, "category_id": label_to_cat_id[l], "bbox": b, "score": s}
            for b, l, s in zip(output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist())]


def encode_pixel_offsets(gt, ref, weights):  # forgets to divide the centre offset by the reference's size
    good = solutions.encode(gt, ref, weights)
    return torch.cat([good[:, :2] * (ref[:, 2:] - ref[:, :2]), good[:, 2:]], 1)


def decode_unclamped(deltas, ref, weights):  # no clamp on dw, dh: exp overflows on a wild delta
    wx, wy, ww, wh = weights
    w, h = (ref[:, 2] - ref[:, 0])[:, None], (ref[:, 3] - ref[:, 1])[:, None]
    cx = ref[:, 0, None] + w / 2 + w * deltas[:, 0::4] / wx
    cy = ref[:, 1, None] + h / 2 + h * deltas[:, 1::4] / wy
    w, h = w * torch.exp(deltas[:, 2::4] / ww), h * torch.exp(deltas[:, 3::4] / wh)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=2).flatten(1)


def match_without_ignore_band(iou, high, low, allow):  # below high is background: no ignored candidates
    matches = solutions.match(iou, high, low, allow)
    return torch.where(matches == -2, torch.full_like(matches, -1), matches)


def nms_across_classes(boxes, scores, labels, threshold):  # a circle suppresses the hexagon under it
    return solutions.nms(boxes, scores, torch.zeros_like(labels), threshold)


WRONG = {
    "ch0.iou": 25 / 100,  # intersection over one box, not over the union
    "ch0.box_area": area_plus_one,
    "ch0.xywh_to_xyxy": lambda b: b.clone(),  # left as (x, y, w, h)
    "ch1.delta_w": math.log(50 / 40),  # the weight ww = 5 forgotten
    "ch1.encode": encode_pixel_offsets,
    "ch1.decode": decode_unclamped,
    "ch1.match": match_without_ignore_band,
    "ch1.nms": nms_across_classes,
    "ch2.level": 4,  # rounded, not floored
    "ch2.assign_levels": levels_rounded,
    "ch2.anchors_per_image": 64**2 + 32**2 + 16**2 + 8**2 + 4**2,  # one anchor per location
    "ch3.prior_bias": -math.log(100),  # -log(1 / pi) instead of -log((1 - pi) / pi)
    "ch3.gamma": 0.5,
    "ch3.focal_loss": focal_from_log_sigmoid,
    "ch4.bilinear": nearest_pixel,
    "ch4.roipool_region": 95,  # the box's own width: no rounding
    "ch4.roi_align": one_sample_per_bin,
    "ch5.mask_target": mask_cut_by_gt_box,
    "ch5.box_outputs": 80 + 4 * 80,  # the background forgotten
    "ch6.linear_transfer": lambda omega, weight, bias: omega @ weight.T,  # no bias
    "ch6.theta_size": 5 * 256 * 64,  # no biases
    "ch6.has_mask": lambda labels, mask_classes: torch.ones(len(labels), dtype=torch.bool),
    "ch7.to_coco": to_coco_xyxy,
    "ch7.rois_sampled": 4 * 128,  # all sampled RoIs, not only the foreground
}


@pytest.mark.parametrize("name", exercises.EXERCISES)
def test_checker_accepts_the_solution(name, capsys):
    assert exercises.check(name, solutions.solution(name))
    out = capsys.readouterr().out
    assert "passed" in out or "correct" in out


@pytest.mark.parametrize("name", exercises.EXERCISES)
def test_checker_rejects_a_plausible_wrong_answer(name, capsys):
    assert name in WRONG, f"give {name} a plausible wrong answer in WRONG"
    assert not exercises.check(name, WRONG[name])
    out = capsys.readouterr().out
    assert name in out and ("differs" in out or "not quite" in out or "raised" in out)


@pytest.mark.parametrize("name", exercises.EXERCISES)
def test_a_stub_is_not_yet(name, capsys):
    def stub(*args):
        raise NotImplementedError

    stub_answer = None if exercises.EXERCISES[name].kind == "derive" else stub
    assert not exercises.check(name, stub_answer)
    assert "not yet" in capsys.readouterr().out


def test_every_chapter_has_checked_exercises():
    for chapter in range(6):
        assert 2 <= len(exercises.exercises_of(chapter)) <= 5, chapter


def test_a_failing_case_shows_both_answers(capsys):
    exercises.check("ch0.box_area", area_plus_one)
    out = capsys.readouterr().out
    assert "yours:" in out and "expected:" in out and "input:" in out


def test_bad_names_and_answers():
    with pytest.raises(ValueError, match="no exercise"):
        exercises.check("ch9.nope", 1)
    assert not exercises.check("ch0.iou", "0.14")
    assert not exercises.check("ch0.iou", math.nan)
    assert not exercises.check("ch0.box_area", 3)
    assert not exercises.check("ch0.box_area", lambda b: 1 / 0)  # the reader's error is reported, not raised
